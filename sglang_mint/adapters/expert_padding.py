"""An adapter's MoE expert tensors padded to a base model whose expert width was padded.

A base may have its experts' intermediate size padded with zero channels (SGLang
on CPU with ``--tp-size 2`` pads the tiny Qwen3-MoE's 32 to 64 so each rank gets
a multiple of 32). The adapter's tensors that touch that width are padded the
same way, with zeros, so every channel an engine slices lines up with the base's
and the padded ones stay zero:

    down_proj A [..., r, 32]       -> [..., r, 64]         (``pad_down_a``)
    gate_up B   [..., 2*32, r]     -> [..., 2*64, r]       gate rows 0:32, up rows 64:96 (``pad_gate_up_b``)
"""

from __future__ import annotations

import torch


def pad_down_a(A, size: int):
    """down_proj's A reads the intermediate: [..., rank, I] -> [..., rank, size], per expert."""
    return per_expert(A, lambda w: pad_dim(w, -1, size))


def pad_gate_up_b(B, size: int, gated: bool):
    """gate_up's B writes gate then up: [..., 2*I, rank] -> [..., 2*size, rank], each half padded
    (``gated``); without a gate, [..., I, rank] -> [..., size, rank]."""
    if gated:
        return per_expert(B, lambda w: torch.cat([pad_dim(half, -2, size) for half in w.chunk(2, dim=-2)], -2)
                          if w.shape[-2] < 2 * size else w)
    return per_expert(B, lambda w: pad_dim(w, -2, size))


def pad_dim(w: torch.Tensor, dim: int, size: int) -> torch.Tensor:
    """``w`` with zeros appended along ``dim`` up to ``size`` (``w`` itself when it is that long already)."""
    missing = size - w.shape[dim]
    if missing <= 0:
        return w
    shape = list(w.shape)
    shape[dim] = missing
    return torch.cat([w, w.new_zeros(shape)], dim=dim)


def per_expert(weights, pad):
    """``pad`` applied to each expert's tensor of SGLang's {expert: tensor} form, or to one stacked tensor."""
    if isinstance(weights, dict):
        return {expert: pad(w) for expert, w in weights.items()}
    return pad(weights)
