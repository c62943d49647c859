"""Pick the Triton launcher or the torch reference for each LoRA op.

Triton runs when the tensors are on CUDA, or when TRITON_INTERPRET=1 was set
before this package was imported (triton.jit reads it at decoration time, so
setting it later has no effect). Anything else (CPU tensors, no interpreter)
runs the `_ref` implementation, which is how `--lora-backend mint --device
cpu` works. The signatures are the launchers' signatures.
"""

from __future__ import annotations

import os

import torch

from .moe_lora import moe_lora, moe_lora_ref
from .sgmv_expand import sgmv_expand, sgmv_expand_ref
from .sgmv_fused import bgmv_fused, bgmv_fused_ref
from .sgmv_shrink import sgmv_shrink, sgmv_shrink_ref

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """True when `t` lives on a CUDA device or the Triton interpreter is on."""
    return t.is_cuda or (INTERPRET and t.device.type == "cpu")


def kernel_path(device) -> str:
    """Which implementation this module picks for tensors on ``device``, for the log."""
    if torch.device(device).type == "cuda":
        return "triton kernels"
    if INTERPRET:
        return "triton kernels (TRITON_INTERPRET=1)"
    return "torch reference (_ref)"


def lora_shrink(x, a, y, batch, n_slices=1, packed_slices=True):
    """sgmv_shrink (Triton) or sgmv_shrink_ref (torch); see sgmv_shrink.py."""
    fn = sgmv_shrink if use_triton(x) else sgmv_shrink_ref
    return fn(x, a, y, batch, n_slices, packed_slices)


def lora_expand(y, b, out, batch, slice_offsets, slice_offsets_cpu=None, packed_slices=True):
    """sgmv_expand (Triton) or sgmv_expand_ref (torch); see sgmv_expand.py."""
    fn = sgmv_expand if use_triton(y) else sgmv_expand_ref
    return fn(y, b, out, batch, slice_offsets, slice_offsets_cpu, packed_slices)


def lora_fused(x, a, b, out, batch, slice_offsets, slice_offsets_cpu=None,
               n_slices=None, packed_slices=True):
    """bgmv_fused (Triton) or bgmv_fused_ref (torch); per-token batches only."""
    fn = bgmv_fused if use_triton(x) else bgmv_fused_ref
    return fn(x, a, b, out, batch, slice_offsets, slice_offsets_cpu, n_slices, packed_slices)


def lora_moe(out, x, a, b, topk_ids, topk_weights, token_slots, ranks, **kw):
    """moe_lora (Triton) or moe_lora_ref (torch); see moe_lora.py."""
    fn = moe_lora if use_triton(x) else moe_lora_ref
    return fn(out, x, a, b, topk_ids, topk_weights, token_slots, ranks, **kw)
