"""The reference runs' cache key (sglang_mint/dev/reference.py): what an adapter computes, not how PEFT wrote it."""

from __future__ import annotations

import json

from sglang_mint.dev.reference import adapter_digest


def write_adapter(folder, **config) -> str:
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"the same weights")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, **config}))
    return str(folder)


def test_an_adapter_s_targets_in_another_order_are_the_same_key(tmp_path):
    # PEFT keeps target_modules as a set: each process wrote them in its own order, and every run missed the cache
    first = adapter_digest(write_adapter(tmp_path / "a", target_modules=["q_proj", "v_proj", "o_proj"],
                                         base_model_name_or_path="/tmp/one"))
    again = adapter_digest(write_adapter(tmp_path / "b", target_modules=["o_proj", "q_proj", "v_proj"],
                                         base_model_name_or_path="/tmp/two"))
    other = adapter_digest(write_adapter(tmp_path / "c", target_modules=["q_proj", "v_proj"]))
    regex = adapter_digest(write_adapter(tmp_path / "d", target_modules=".*proj"))
    assert first == again and len({first, other, regex}) == 3
