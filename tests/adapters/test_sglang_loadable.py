"""What publish accepts, SGLang's loader takes: checked against the installed sglang's own code.

* SGLang's LoRAConfig reads ``hf_config["lora_alpha"]``: a config without it was a KeyError on
  every request. PEFT gives such a config lora_alpha 8 (LoraConfig's default), so publish writes
  that value into the config it stores, and the adapter is served as PEFT computes it.
* SGLang's normalize_qkv_proj stacks q/k/v and looks up v_proj whenever q_proj is there: a q_proj
  (or q_proj + k_proj) adapter was a KeyError on every load. load_for_serving fills the missing
  k_proj/v_proj (and q_proj) with zeros (stack_fill.py), what the packed converter does too.
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
    from sglang_mint.adapters.stack_fill import complete_stacks

    tensors = lora_tensors(modules=("q_proj", "v_proj", "o_proj"))
    assert complete_stacks(tensors, TINY) is tensors
    q_only = lora_tensors(modules=("q_proj",))
    filled = complete_stacks(q_only, TINY)
    assert set(filled) - set(q_only) == {key(layer, "v_proj", ab) for layer in range(2) for ab in "AB"}


def test_an_up_proj_without_its_gate_proj_loads_into_sglang_s_gate_up_proj():
    """SGLang stacks gate_up_proj from gate_proj: an up_proj alone stayed unstacked, a 422 on every load."""
    from sglang.srt.lora.lora import LoRAAdapter

    from sglang_mint.adapters.stack_fill import complete_stacks

    tensors = lora_tensors(modules=("up_proj",), dtype=torch.float32)
    served = complete_stacks(tensors, TINY)
    LoRAAdapter.normalize_gate_up_proj(None, list(served), served)  # up present: no self used
    for layer in range(2):
        a, b = served[key(layer, "gate_up_proj", "A")], served[key(layer, "gate_up_proj", "B")]
        assert list(a.shape) == [16, 128] and list(b.shape) == [512, 8]
        assert torch.equal(a[8:], tensors[key(layer, "up_proj", "A")]) and not a[:8].any()
        assert torch.equal(b[256:], tensors[key(layer, "up_proj", "B")]) and not b[:256].any()
    gated = lora_tensors(modules=("gate_proj", "up_proj"))
    assert complete_stacks(gated, TINY) is gated


@pytest.mark.parametrize("present", ["q_a_proj", "kv_a_proj_with_mqa"])
def test_one_half_of_mla_s_fused_qkv_a_loads_with_the_pool_s_widths(present):
    """SGLang fuses q_a_proj and kv_a_proj_with_mqa from q_a_proj, making a missing kv_a
    ``zeros_like(q_a)``: B of q_lora_rank rows where the pool holds kv_lora_rank + rope, and its
    assert then failed in the scheduler's forward (a real DeepSeek-V3 server stopped)."""
    from sglang.srt.lora.lora import LoRAAdapter

    from sglang_mint.adapters.base_model import base_model_from_config
    from sglang_mint.adapters.stack_fill import complete_stacks

    base = base_model_from_config({"model_type": "deepseek_v3", "hidden_size": 64, "num_attention_heads": 2,
                                   "num_hidden_layers": 1, "q_lora_rank": 48, "kv_lora_rank": 256,
                                   "qk_rope_head_dim": 32, "qk_nope_head_dim": 16, "v_head_dim": 16,
                                   "intermediate_size": 128, "vocab_size": 1000}, "ds")
    assert base.mla
    fin, fout = base.module_shape("self_attn", present)
    name = "base_model.model.model.layers.0.self_attn.{}.lora_{}.weight"
    tensors = {name.format(present, "A"): torch.randn(4, fin), name.format(present, "B"): torch.randn(fout, 4)}
    served = complete_stacks(tensors, base)
    LoRAAdapter.normalize_fused_qkv_a_proj(None, list(served), served)
    b = served[name.format("fused_qkv_a_proj_with_mqa", "B")]
    assert list(b.shape) == [48 + 256 + 32, 4]  # q_lora_rank + kv_lora_rank + rope: what the pool holds
    rows = slice(0, 48) if present == "q_a_proj" else slice(48, 336)
    assert torch.equal(b[rows], tensors[name.format(present, "B")])
    others = torch.ones(336, dtype=torch.bool)
    others[rows] = False
    assert not b[others].any()  # the missing half adds nothing
