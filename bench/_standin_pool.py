"""SGLang's real ``LoRAMemoryPool`` on CPU without a server: for tests and benchmarks of the pool fill.

The pool needs a base model only to size its buffers (``config``, one
parameter for the device, FusedMoE instances to detect MoE) and the fill
needs ``lora_modules`` (per layer, module name -> LoRA layer) for their slice
methods. Both are built here from an HF config with SGLang's own layer
classes, their base layers reduced to the attributes the slice methods read
at TP 1. Example::

    base, modules = standin_base_and_modules(cfg)
    with tp1():
        pool = standin_pool(cfg, base, max_rank=8, targets={"qkv_proj", "o_proj"})
        LoRAMemoryPool.load_lora_weight_to_buffer(pool, "a", 0, adapter, modules, None, None)

Development tooling, not serving glue: its users are tests/sglang/test_packed_pool.py
and bench/load_bench.py. SGLang is imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import types

import torch
from torch import nn


@contextlib.contextmanager
def tp1():
    """Parallel widths of a single-GPU server (nothing is published in a bare process)."""
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(tp_size=1, tp_rank=0, attn_tp_size=1, attn_tp_rank=0, moe_ep_size=1,
                                 moe_ep_rank=0, moe_tp_size=1, moe_tp_rank=0):
        yield


def _bare(cls, **attrs):
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in attrs.items():
        object.__setattr__(m, k, v)
    return m


def _experts(cfg) -> int:
    return next((getattr(cfg, k) for k in ("num_experts", "n_routed_experts", "num_local_experts")
                 if getattr(cfg, k, None)), 0)


def standin_base_and_modules(cfg, targets=("qkv_proj", "o_proj", "gate_up_proj", "down_proj")):
    """(base model, lora_modules) for a Llama-like (dense) or Qwen3-MoE-like (experts) config;
    lora_modules holds the layers of ``targets`` only, as LoRAManager wraps only those."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.lora import layers as L

    base = nn.Module()
    base.config = cfg
    base.p = nn.Parameter(torch.zeros(1))
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    inter = cfg.intermediate_size
    modules = []
    for layer in range(cfg.num_hidden_layers):
        pre = f"model.layers.{layer}."
        mods = {}
        if "qkv_proj" in targets:
            mods[pre + "self_attn.qkv_proj"] = _bare(L.QKVParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                q_proj_shard_size=heads * head, kv_proj_shard_size=kv * head, num_kv_head_replicas=1, tp_group=None,
                kv_tp_group=None, total_num_heads=heads, head_size=head, total_num_kv_heads=kv))
        if "o_proj" in targets:
            mods[pre + "self_attn.o_proj"] = _bare(L.RowParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                tp_group=None, input_size_per_partition=heads * head))
        mlp = {"gate_up_proj", "down_proj"} & set(targets)
        if mlp and _experts(cfg):
            inner = _bare(FusedMoE, moe_runner_config=types.SimpleNamespace(is_gated=True), moe_tp_rank=0,
                          is_shared_fused_moe=False)
            base.add_module(f"moe{layer}", inner)
            mods[pre + "mlp.experts"] = _bare(L.FusedMoEWithLoRA, base_layer=inner, tp_size=1,
                                              _uses_interleaved_gate_up=False)
        else:
            if "gate_up_proj" in mlp:
                mods[pre + "mlp.gate_up_proj"] = _bare(L.MergedColumnParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                    tp_group=None, output_partition_sizes=[inter, inter], output_sizes=[inter, inter]))
            if "down_proj" in mlp:
                mods[pre + "mlp.down_proj"] = _bare(L.RowParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                    tp_group=None, input_size_per_partition=inter))
        modules.append(mods)
    return base, modules


def standin_pool(cfg, base, max_rank: int, targets: set[str], slots: int = 1, dtype=torch.float32,
                 shared_outer: bool = False):
    """A real LoRAMemoryPool sized from ``base`` (see standin_base_and_modules); call inside ``tp1()``."""
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    return LoRAMemoryPool(cfg, max_loras_per_batch=slots, dtype=dtype, max_lora_rank=max_rank,
                          target_modules=set(targets), base_model=base, eviction_policy="lru",
                          lora_added_tokens_size=0, experts_shared_outer_loras=shared_outer)


def poison(pool, seed: int) -> None:
    """Random values in every A/B buffer: a fill must overwrite or zero what SGLang's does."""
    g = torch.Generator().manual_seed(seed)
    for bufs in (pool.A_buffer, pool.B_buffer):
        for layers in bufs.values():
            for t in layers:
                t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))


def pools_equal(a, b) -> list[str]:
    """Names of the (buffer, key, layer) that differ bit-wise; empty when identical."""
    bad = []
    for name in ("A_buffer", "B_buffer"):
        x, y = getattr(a, name), getattr(b, name)
        if x.keys() != y.keys():
            return [f"{name} keys {sorted(x)} != {sorted(y)}"]
        for key in x:
            for layer, (s, t) in enumerate(zip(x[key], y[key])):
                if s.dtype != t.dtype or not torch.equal(s.view(torch.uint8), t.view(torch.uint8)):
                    bad.append(f"{name}[{key}][{layer}]")
    return bad
