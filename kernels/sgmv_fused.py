"""Fused shrink + expand for decode: the rank-r intermediate never leaves the chip.

Semantics (per-token form only; for segments use sgmv_shrink + sgmv_expand):
    R = a.shape[1] // n_slices
    for every row t with s = token_slots[t] >= 0 and r = ranks[s] > 0:
        for i, (lo, hi) in enumerate(pairwise(slice_offsets)):
            c = i * (r if packed_slices else R)
            out[t, lo:hi] += scalings[s] * ((x[t] @ a[s, c:c+r, :]^T) @ b[s, lo:hi, :r]^T)
    other rows untouched. Equal to sgmv_expand(sgmv_shrink(x), ...) up to rounding
    (the intermediate stays fp32 here; the two-launch path rounds it to x.dtype).

Why: at decode the two-launch path is dominated by launch latency and by
re-reading y; here one program per (token, slice, CHUNK_N columns) computes
h = x @ A_i^T (A_i is R x K: re-read by each chunk of the same token, from L2)
and streams B. Whether it beats two launches on H100 is NOT measured yet
(no GPU in the session that wrote it): bench/kernel_bench.py times both.

Shape:
    x      [T, K];  a [n_slots, n_slices*R, K];  b [n_slots, out_total, R]
    out    [T, >= out_total] caller-owned, accumulated in place
    slice_offsets [n_slices+1] int32 device tensor (+ optional host copy)
    batch  LoraBatch in token_slots form
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._tiles import masked_row_gemv

from ._config import cdiv, get_config, launch_kwargs
from ._launch import FastLaunch
from .batch import LoraBatch
from .sgmv_expand import _host_offsets, sgmv_expand_ref
from .sgmv_shrink import sgmv_shrink_ref


@FastLaunch
@triton.jit
def _bgmv_fused_kernel(
    x_ptr, a_ptr, b_ptr, out_ptr, token_slots_ptr, ranks_ptr, scalings_ptr, offsets_ptr,
    K, R,
    stride_xm, stride_as, stride_an, stride_bs, stride_bn, stride_om,
    PACKED: tl.constexpr, CHUNK_N: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr,
):
    t = tl.program_id(2).to(tl.int64)
    sl = tl.program_id(1)
    chunk = tl.program_id(0)
    slot = tl.load(token_slots_ptr + t)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot).to(tl.int32), R)
    if rank <= 0:
        return
    lo = tl.load(offsets_ptr + sl)
    hi = tl.load(offsets_ptr + sl + 1)
    n_lo = lo + chunk * CHUNK_N
    if n_lo >= hi:
        return
    n_hi = tl.minimum(n_lo + CHUNK_N, hi)
    if PACKED:
        row0 = sl * rank
    else:
        row0 = sl * R
    offs_r = tl.arange(0, BLOCK_R)
    r_mask = offs_r < rank
    offs_k = tl.arange(0, BLOCK_K)
    # h = x[t] @ A_i^T  -> [BLOCK_R] fp32
    a_ptrs = (a_ptr + slot.to(tl.int64) * stride_as
              + (row0 + offs_r[:, None]).to(tl.int64) * stride_an + offs_k[None, :])
    x_ptrs = x_ptr + t * stride_xm + offs_k
    h = masked_row_gemv(a_ptrs, x_ptrs, r_mask, K, BLOCK_R, BLOCK_K)
    h *= tl.load(scalings_ptr + slot)
    # out[t, n_lo:n_hi] += B_i[n_lo:n_hi, :r] @ h
    offs_n = tl.arange(0, BLOCK_N)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        cols = n0 + offs_n
        n_mask = cols < n_hi
        bt = tl.load(b_ptr + slot.to(tl.int64) * stride_bs
                     + cols[:, None].to(tl.int64) * stride_bn + offs_r[None, :],
                     mask=n_mask[:, None] & r_mask[None, :], other=0.0)
        d = tl.sum(bt.to(tl.float32) * h[None, :], axis=1)
        o_ptrs = out_ptr + t * stride_om + cols
        d += tl.load(o_ptrs, mask=n_mask, other=0.0).to(tl.float32)
        tl.store(o_ptrs, d.to(out_ptr.dtype.element_ty), mask=n_mask)


def bgmv_fused(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
               batch: LoraBatch, slice_offsets: torch.Tensor,
               slice_offsets_cpu: Optional[Sequence[int]] = None, n_slices: Optional[int] = None,
               packed_slices: bool = True) -> torch.Tensor:
    """Triton launcher; accumulates into `out` in place and returns it.

    Semantics and Shape: see the module docstring. Requires batch.token_slots.
    """
    assert batch.is_bgmv, "bgmv_fused takes the per-token form (LoraBatch.token_slots)"
    offs = _host_offsets(slice_offsets, slice_offsets_cpu)
    n = len(offs) - 1
    assert n_slices in (None, n), (n_slices, offs)
    assert x.dim() == 2 and a.dim() == 3 and b.dim() == 3 and out.dim() == 2
    assert a.shape[1] == n * b.shape[2] and x.shape[1] == a.shape[2]
    assert offs[-1] <= b.shape[1] and out.shape[1] >= offs[-1]
    assert x.stride(1) == 1 and a.stride(2) == 1 and b.stride(2) == 1 and out.stride(1) == 1
    if slice_offsets.device != x.device:
        slice_offsets = slice_offsets.to(x.device)
    T, K = x.shape
    R = b.shape[2]
    widest = max(hi - lo for lo, hi in zip(offs, offs[1:]))
    if T == 0 or R == 0 or widest == 0:
        return out
    cfg = get_config("bgmv_fused", x.device, K=K, R=R, S=n, M=T)
    block_r = max(cfg["BLOCK_R"], triton.next_power_of_2(R))
    grid = (cdiv(widest, cfg["CHUNK_N"]), n, T)
    _bgmv_fused_kernel[grid](
        x, a, b, out, batch.token_slots, batch.ranks, batch.scalings, slice_offsets, K, R,
        x.stride(0), a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0),
        PACKED=packed_slices, CHUNK_N=cfg["CHUNK_N"],
        BLOCK_R=block_r, BLOCK_K=cfg["BLOCK_K"], BLOCK_N=cfg["BLOCK_N"],
        **launch_kwargs(cfg))
    return out


def bgmv_fused_ref(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, out: torch.Tensor,
                   batch: LoraBatch, slice_offsets: torch.Tensor,
                   slice_offsets_cpu: Optional[Sequence[int]] = None,
                   n_slices: Optional[int] = None, packed_slices: bool = True) -> torch.Tensor:
    """Reference: sgmv_shrink_ref into an fp32 intermediate, then sgmv_expand_ref."""
    offs = _host_offsets(slice_offsets, slice_offsets_cpu)
    n = len(offs) - 1
    y = torch.zeros(x.shape[0], a.shape[1], dtype=torch.float32, device=x.device)
    sgmv_shrink_ref(x.float(), a, y, batch, n, packed_slices)
    return sgmv_expand_ref(y, b, out, batch, slice_offsets, offs, packed_slices)
