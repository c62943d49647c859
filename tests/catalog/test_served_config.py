"""The adapter_config.json a catalog stores is one SGLang reads, and an upload's config never makes the
server read a path of the tenant's choosing.

* Without lora_alpha, SGLang's LoRAConfig raised KeyError on every request: the stored config carries
  PEFT's value (8), in the PEFT form and in the packed one (lora_alpha / r is PEFT's scaling).
* ``base_model_name_or_path`` of an upload named a path the server opened (``<path>/config.json``)
  and echoed what it found: a tenant could probe the server's files. Only a folder published by
  its operator (``mint catalog publish DIR``) is still compared with the base model it names.
"""

from __future__ import annotations

import json
import os

import pytest
from catalog_fixtures import write_base, write_peft, written

from sglang_mint.adapters.errors import BaseModelMismatch
from sglang_mint.adapters.peft import CONFIG, WEIGHTS
from sglang_mint.catalog.upload import publish_files


def _files(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, name) for name in ("adapter_config.json", "adapter_model.safetensors")}


def _drop_alpha(folder: str) -> str:
    path = os.path.join(folder, "adapter_config.json")
    cfg = json.loads(open(path).read())
    del cfg["lora_alpha"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    return folder


@pytest.mark.parametrize("pack", [False, True], ids=["peft", "packed"])
def test_a_config_without_lora_alpha_is_stored_as_sglang_reads_it(cat, tmp_path, pack):
    from sglang.srt.lora.lora_config import LoRAConfig

    folder = _drop_alpha(write_peft(tmp_path / "a", rank=4))
    rev = publish_files(cat, "no/alpha", _files(folder), pack=pack)
    served = LoRAConfig(str(rev.local_path()))  # what read_adapter builds first; KeyError before
    assert served.lora_alpha / served.r == 8 / 4  # PEFT's default alpha 8 over the adapter's rank 4


def _publish_as_an_older_version(cat, adapter_id: str, folder: str):
    """What publish stored before it added PEFT's lora_alpha: the operator's config byte for byte, and the
    row's alpha r (``config.get("lora_alpha", r)``), through the catalog's own store."""
    raw = open(os.path.join(folder, CONFIG), "rb").read()
    r = json.loads(raw)["r"]
    payload = {CONFIG: raw, WEIGHTS: open(os.path.join(folder, WEIGHTS), "rb").read()}
    return cat._publish(adapter_id, "peft", payload, r, float(r), tuple(json.loads(raw)["target_modules"]),
                        "float16", None, None)


def _scheduler_manager():
    """What read_adapter takes from SGLang's LoRAManager, for the tiny Llama of catalog_fixtures.TINY."""
    from types import SimpleNamespace

    from sglang.srt.configs.load_config import LoadConfig
    from transformers import LlamaConfig

    hf = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, head_dim=32, vocab_size=1000)
    pool = SimpleNamespace(can_support=lambda config: True,
                           target_modules={"qkv_proj", "o_proj", "gate_up_proj", "down_proj"})
    return SimpleNamespace(base_hf_config=hf, memory_pool=pool,
                           load_config=LoadConfig(), lora_backend=None, base_model=None)


def test_a_revision_an_older_version_stored_without_lora_alpha_loads_with_peft_s_alpha(cat, tmp_path):
    """Before: KeyError 'lora_alpha' from SGLang's LoRAConfig on every load of such a revision."""
    from sglang_mint.sglang.adapter_reader import read_adapter

    rev = _publish_as_an_older_version(cat, "old/no-alpha", _drop_alpha(write_peft(tmp_path / "a", rank=4)))
    stored = cat.blobs.read(rev.files[CONFIG])
    assert "lora_alpha" not in json.loads(stored)
    adapter, host_bytes = read_adapter(_scheduler_manager(), cat, "old/no-alpha", cat.resolve("old/no-alpha"))
    assert adapter.config.lora_alpha == 8 and adapter.scaling == 8 / 4  # PEFT's default alpha over rank 4
    stacked = {name.split(".")[-3] for name in adapter.layers[1].weights}  # SGLang stacks q/k/v and gate/up
    assert host_bytes > 0 and stacked == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    assert cat.blobs.read(rev.files[CONFIG]) == stored and cat.verify()["ok"]  # the revision is not rewritten


def test_an_upload_s_named_base_path_is_never_read(cat, tmp_path):
    """Before: 'adapter was trained on <path> (llama-...)' for a folder holding another model's config.json,
    and 'base model config <path>/config.json is unreadable' for a file that is not JSON."""
    other = write_base(tmp_path / "other-model", hidden_size=256)
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "config.json").write_text("not json")
    for i, named in enumerate((other, str(junk))):
        folder = write_peft(tmp_path / f"u{i}", config={"base_model_name_or_path": named})
        rev = publish_files(cat, f"probe/{i}", _files(folder))  # checked by its tensors, the named path unread
        assert rev.revision == 1


def test_an_operator_s_folder_is_still_compared_with_the_base_it_names(cat, tmp_path):
    other = write_base(tmp_path / "other-model", hidden_size=256)
    folder = write_peft(tmp_path / "a", config={"base_model_name_or_path": other})
    before = written(cat)
    with pytest.raises(BaseModelMismatch, match="adapter was trained on"):
        cat.publish("a", folder)
    assert written(cat) == before


def test_a_weight_the_pool_cannot_file_fails_the_read_not_the_forward(cat, tmp_path):
    """SGLang's pool fill files each weight by name as a batch is formed and raised on one it could not
    (DeepSeek-V2-Lite's kv_a_proj_with_mqa: the scheduler's forward raised and the server stopped).
    read_adapter looks every name up the same way, on the read thread: such an adapter fails there."""
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.sglang.adapter_reader import read_adapter, unfiled_weights

    rev = publish_files(cat, "pool/names", _files(write_peft(tmp_path / "a", rank=4)))
    manager = _scheduler_manager()
    adapter, _ = read_adapter(manager, cat, "pool/names", rev)  # every name files: read as before
    assert unfiled_weights(adapter, manager.memory_pool.target_modules) == []
    manager.memory_pool.target_modules = {"qkv_proj", "gate_up_proj", "down_proj"}  # a pool without o_proj
    with pytest.raises(InvalidAdapter, match=r"pool has no module for .*o_proj.* and \d+ more \(its modules: "
                                             r"down_proj, gate_up_proj, qkv_proj\)"):
        read_adapter(manager, cat, "pool/names", rev)
