"""What publish accepts, SGLang's loader takes: checked against the installed sglang's own code.

* SGLang's LoRAConfig reads ``hf_config["lora_alpha"]``: a config without it was a KeyError on
  every request. PEFT gives such a config lora_alpha 8 (LoraConfig's default), so publish writes
  that value into the config it stores, and the adapter is served as PEFT computes it.
* SGLang's normalize_qkv_proj stacks q/k/v and looks up v_proj whenever q_proj is there: a q_proj
  (or q_proj + k_proj) adapter was a KeyError on every load. load_for_serving fills the missing
  k_proj/v_proj (and q_proj) with zeros, what the packed converter does (convert.py ZERO_LIKE).
"""

from __future__ import annotations

import json

import pytest
import torch
from adapter_fixtures import SHAPES, TINY, config_bytes, key, lora_config, lora_tensors
from peft import LoraConfig
from safetensors.torch import save, save_file

from sglang_mint.adapters.peft import check_peft_bytes, load_for_serving

QKV = ("q_proj", "k_proj", "v_proj")


def test_a_config_without_lora_alpha_is_stored_with_peft_s_value(tmp_path):
    from sglang.srt.lora.lora_config import LoRAConfig

    raw = config_bytes(lora_alpha=None)
    (tmp_path / "adapter_config.json").write_bytes(raw)
    peft_alpha = LoraConfig.from_pretrained(str(tmp_path)).lora_alpha  # what PEFT computes with
    got = check_peft_bytes(raw, save(lora_tensors()), TINY, "up")
    stored = json.loads(got.config_bytes)
    assert stored == {**json.loads(raw), "lora_alpha": peft_alpha} and got.alpha == peft_alpha
    assert LoRAConfig(config_dict=stored).lora_alpha == peft_alpha  # SGLang's reader: no KeyError


def test_a_config_with_lora_alpha_is_stored_byte_for_byte():
    raw = b'{"r": 8,   "peft_type": "LORA", "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}'
    assert check_peft_bytes(raw, save(lora_tensors()), TINY, "up").config_bytes is raw


@pytest.mark.parametrize("modules", [("q_proj",), ("q_proj", "k_proj"), ("k_proj",), ("v_proj",),
                                     ("k_proj", "v_proj"), ("q_proj", "v_proj"), QKV], ids="+".join)
def test_any_part_of_q_k_v_loads_into_sglang_s_qkv_proj(modules, tmp_path):
    from sglang.srt.lora.lora import LoRAAdapter

    tensors = lora_tensors(modules=modules + ("o_proj",), dtype=torch.float32)
    save_file(tensors, str(tmp_path / "adapter_model.safetensors"))
    cfg = lora_config(target_modules=list(modules) + ["o_proj"])
    check_peft_bytes(json.dumps(cfg).encode(), save(tensors), TINY, "up")  # publish takes it
    _, served = load_for_serving(str(tmp_path), cfg, TINY, "load")
    LoRAAdapter.normalize_qkv_proj(None, list(served), served)  # SGLang's own stacking (no self used)
    for layer in range(2):
        a = served[key(layer, "qkv_proj", "A")]
        b = served[key(layer, "qkv_proj", "B")]
        assert list(a.shape) == [3 * 8, 128] and list(b.shape) == [128 + 64 + 64, 8]
        rows = dict(zip(QKV, (slice(0, 128), slice(128, 192), slice(192, 256))))
        for i, m in enumerate(QKV):
            want_b = tensors.get(key(layer, m, "B"), torch.zeros(SHAPES[m][1], 8))
            assert torch.equal(b[rows[m]], want_b), (m, layer)  # a missing module adds exactly nothing
            if m in modules:
                assert torch.equal(a[8 * i:8 * (i + 1)], tensors[key(layer, m, "A")])
        assert torch.equal(served[key(layer, "o_proj", "A")], tensors[key(layer, "o_proj", "A")])


def test_a_q_and_v_adapter_is_left_as_it_is():
    """The common q_proj + v_proj adapter needs nothing (SGLang zero-fills k_proj itself): no copy on a cold load."""
    from sglang_mint.adapters.qkv_fill import complete_qkv

    tensors = lora_tensors(modules=("q_proj", "v_proj", "o_proj"))
    assert complete_qkv(tensors, TINY) is tensors
    q_only = lora_tensors(modules=("q_proj",))
    filled = complete_qkv(q_only, TINY)
    assert set(filled) - set(q_only) == {key(layer, "v_proj", ab) for layer in range(2) for ab in "AB"}
