"""Fixtures for the packed tests: a real PEFT 0.21 fused-expert adapter."""

from __future__ import annotations

import pytest
import torch

from packed_layouts import E, H, I, R


@pytest.fixture(scope="session")
def peft_fused(tmp_path_factory):
    """A real PEFT 0.21 adapter on a tiny transformers-5 Qwen3-MoE: fused experts (`experts.base_layer`)."""
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=H, intermediate_size=48, moe_intermediate_size=I,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=E, num_experts_per_tok=2, mlp_only_layers=[])
    model = Qwen3MoeForCausalLM(cfg)
    base = tmp_path_factory.mktemp("qwen3moe")
    model.save_pretrained(base)
    peft = get_peft_model(model, LoraConfig(r=R, lora_alpha=8, init_lora_weights=False,
                                            target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                                            "gate_proj", "up_proj", "down_proj"]))
    out = tmp_path_factory.mktemp("peft-fused")
    peft.save_pretrained(out)
    return out, base, peft
