"""`mint pack --base DIR` reads a base model's config.json as `mint catalog init` does.

Before, pack read the file its own way (``json.load`` of text): a config.json with a UTF-8 BOM, which the
catalog reads, was refused with a JSONDecodeError traceback, and a folder without config.json, a file that
is not JSON or not an object, and a ``text_config`` that is not an object gave a Python traceback instead
of ``mint: error: ...``. Both also refused a config lacking a size as "config.json lacks integer
num_attention_heads", naming neither the file nor the ``text_config.`` the key lives under. Now one reader
(adapters/base_model.py ``read_base_model``) serves both, and its refusals name the key and the file.
"""

from __future__ import annotations

import json

import pytest

from packed_layouts import write_layout
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.packed.convert import base_identity
from sglang_mint.packed.reader import read_header

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
         "intermediate_size": 14336, "num_attention_heads": 32, "num_key_value_heads": 8, "num_hidden_layers": 32,
         "vocab_size": 128256, "head_dim": 128, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
         "tie_word_embeddings": False, "torch_dtype": "bfloat16"}
# meta-llama/Llama-4-Scout-17B-16E-Instruct: every size under text_config (vision_config left out)
LLAMA4_SCOUT = {"architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
                "tie_word_embeddings": False, "text_config": {
                    "model_type": "llama4_text", "head_dim": 128, "hidden_size": 5120, "intermediate_size": 8192,
                    "intermediate_size_mlp": 16384, "interleave_moe_layer_step": 1, "num_attention_heads": 40,
                    "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 16,
                    "rope_theta": 500000.0, "vocab_size": 202048}}
# google/gemma-3-4b-it: its text_config leaves num_attention_heads (and more) to Gemma3TextConfig's defaults
GEMMA3_4B = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3",
             "boi_token_index": 255999, "eoi_token_index": 256000, "image_token_index": 262144,
             "mm_tokens_per_image": 256, "text_config": {
                 "hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text",
                 "num_hidden_layers": 34, "rope_scaling": {"factor": 8.0, "rope_type": "linear"},
                 "sliding_window": 1024},
             "vision_config": {"hidden_size": 1152, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                               "num_attention_heads": 16, "num_hidden_layers": 27}}


def _base(tmp_path, data: bytes | None) -> str:
    """A base model folder whose config.json holds ``data`` (None: no config.json)."""
    folder = tmp_path / "base"
    folder.mkdir()
    if data is not None:
        (folder / "config.json").write_bytes(data)
    return str(folder)


ACCEPTED = {  # form -> (config.json bytes, the text model's model_type)
    "llama4-text-config": (json.dumps(LLAMA4_SCOUT).encode(), "llama4_text"),
    "head-dim-null": (json.dumps({**LLAMA, "head_dim": None}).encode(), "llama"),
    "utf8-bom": (b"\xef\xbb\xbf" + json.dumps(LLAMA, indent=2).encode(), "llama"),
}


@pytest.mark.parametrize("form", sorted(ACCEPTED))
def test_pack_base_records_the_identity_the_catalog_records(form, tmp_path):
    from sglang_mint.catalog import init_catalog
    from sglang_mint.cli import main

    data, text_type = ACCEPTED[form]
    base = _base(tmp_path, data)
    with init_catalog(str(tmp_path / "cat"), base) as cat:
        want = {**cat.base.packed_identity(), "model_type": text_type}
    assert base_identity(base) == want
    src, dst = write_layout(tmp_path / "src", "mla"), tmp_path / "packed"
    assert main(["pack", str(src), str(dst), "--base", base]) == 0
    assert read_header(str(dst / "adapter.mintpack"))[2]["base"] == want


REFUSED = {  # form -> (config.json bytes or None, what the refusal says after the file's path)
    "gemma3-text-config-without-heads": (json.dumps(GEMMA3_4B).encode(),
                                         ": text_config.num_attention_heads is missing"),
    "float-hidden-size": (json.dumps({**LLAMA, "hidden_size": 4096.0}).encode(),
                          ": hidden_size is 4096.0, not a positive integer"),
    "bool-layers": (json.dumps({**LLAMA, "num_hidden_layers": True}).encode(),
                    ": num_hidden_layers is true, not a positive integer"),
    "text-config-not-an-object": (json.dumps({**LLAMA, "text_config": [LLAMA]}).encode(),
                                  ": text_config is a list, not a JSON object"),
    "not-json": (b"{'hidden_size': 4096}", " is not JSON"),
    "not-an-object": (json.dumps([LLAMA]).encode(), " is not a JSON object"),
    "no-config-json": (None, " does not exist"),
}


@pytest.mark.parametrize("form", sorted(REFUSED))
def test_a_config_without_what_is_needed_is_refused_alike_naming_the_key_and_the_file(form, tmp_path, capsys):
    from sglang_mint.catalog import init_catalog
    from sglang_mint.cli import main

    data, says = REFUSED[form]
    base = _base(tmp_path, data)
    wanted = f"base model config {base}/config.json{says}"
    with pytest.raises(InvalidAdapter) as refused:
        init_catalog(str(tmp_path / "cat"), base)
    assert wanted in str(refused.value), str(refused.value)
    src = write_layout(tmp_path / "src", "mla")
    assert main(["pack", str(src), str(tmp_path / "packed"), "--base", base]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"mint: error: --base {base}: ") and wanted in err, err
    assert not (tmp_path / "packed").exists()  # refused before anything is written
