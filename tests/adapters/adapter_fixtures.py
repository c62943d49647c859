"""Helpers for the adapter tests: the tiny Llama base (hidden 128, 4 heads, 2 kv heads of 32) and
PEFT LoRA tensors and configs for it, in memory (a module named conftest is ambiguous when pytest
collects several test folders at once)."""

from __future__ import annotations

import json

import torch

from sglang_mint.adapters.base_model import base_model_from_config

TINY_CONFIG = {"model_type": "llama", "hidden_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2,
               "head_dim": 32, "num_hidden_layers": 2, "intermediate_size": 256, "vocab_size": 1000}
TINY = base_model_from_config(TINY_CONFIG, "tiny")
# (in, out) of the tiny Llama's modules
SHAPES = {"q_proj": (128, 128), "k_proj": (128, 64), "v_proj": (128, 64), "o_proj": (128, 128),
          "gate_proj": (128, 256), "up_proj": (128, 256), "down_proj": (256, 128)}
ATTN = ("q_proj", "k_proj", "v_proj", "o_proj", "qkv_proj")
KEY = "base_model.model.model.layers.{layer}.{parent}.{module}.lora_{ab}.weight"


def key(layer: int, module: str, ab: str) -> str:
    """The PEFT tensor name of ``module`` in ``layer``: ``key(0, "q_proj", "A")`` is
    ``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``."""
    return KEY.format(layer=layer, parent="self_attn" if module in ATTN else "mlp", module=module, ab=ab)


def lora_tensors(rank: int = 8, modules=("q_proj", "v_proj"), layers: int = 2, seed: int = 0,
                 dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """Random A [rank, in] / B [out, rank] for ``modules`` of every layer of the tiny Llama."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for layer in range(layers):
        for m in modules:
            fin, fout = SHAPES[m]
            out[key(layer, m, "A")] = torch.randn(rank, fin, generator=gen).to(dtype)
            out[key(layer, m, "B")] = torch.randn(fout, rank, generator=gen).to(dtype)
    return out


def lora_config(**changes) -> dict:
    """A rank-8 q_proj/v_proj adapter_config.json as a dict; ``changes`` replace keys (None removes one)."""
    cfg = {"peft_type": "LORA", "r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}
    cfg.update(changes)
    return {k: v for k, v in cfg.items() if v is not None}


def config_bytes(**changes) -> bytes:
    return json.dumps(lora_config(**changes)).encode()
