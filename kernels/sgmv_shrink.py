"""LoRA shrink: y = x @ A[slot]^T for every row, n_slices stacked in one launch.

Semantics:
    R = a.shape[1] // n_slices                      # padded max rank
    for every physical row t with slot s = slot(t) >= 0 and r = ranks[s] > 0:
        for i in range(n_slices):
            c = i * (r if packed_slices else R)     # where slice i lives
            y[t, c:c+r] = x[t] @ a[s, c:c+r, :]^T   # fp32 accumulate
    every other element of y is left untouched (never read by expand).

`packed_slices=True` is SGLang's dense pool layout (mem_pool.py loads an
adapter of rank r into A[slot, :n_slices*r], so slice i starts at row i*r).
`packed_slices=False` spaces slices by the padded rank R (SGLang's MoE pool).

Shape:
    x   [T, K]                 activations (any row stride, unit column stride)
    a   [n_slots, n_slices*R, K]  LoRA A pool (contiguous in its last dim)
    y   [T, n_slices*R]        caller-owned output, same dtype as x
    batch: LoraBatch           segments (sgmv) or token_slots (bgmv); see batch.py
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._config import cdiv, get_config, launch_kwargs, split_for
from ._launch import MISSING, FastLaunch, LaunchPlan, LaunchPlans
from ._splitk import WORKSPACE, k_per_split
from ._tiles import masked_tile_dot, split_k_finish, split_k_range
from .batch import LoraBatch


@FastLaunch
@triton.jit
def _sgmv_shrink_kernel(
    x_ptr, a_ptr, y_ptr, part_ptr, counter_ptr,
    seg_indptr_ptr, seg_slots_ptr, perm_ptr, ranks_ptr,
    K, R, n_slices, n_splits, K_PER_SPLIT, num_n_tiles,
    stride_xm, stride_as, stride_an, stride_ym, stride_pp, stride_pm,
    PACKED: tl.constexpr, HAS_PERM: tl.constexpr, SPLIT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid = (m_tiles * n_tiles, n_segments, n_splits): one BLOCK_M x BLOCK_N tile of
    # one segment, over K_PER_SPLIT of the K columns.
    seg = tl.program_id(1)
    pid = tl.program_id(0)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    slot = tl.load(seg_slots_ptr + seg)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot).to(tl.int32), R)
    if rank <= 0:
        return
    start = tl.load(seg_indptr_ptr + seg)
    end = tl.load(seg_indptr_ptr + seg + 1)
    row0 = start + pid_m * BLOCK_M
    if row0 >= end:
        return
    offs_m = row0 + tl.arange(0, BLOCK_M)
    m_mask = offs_m < end
    if HAS_PERM:
        rows = tl.load(perm_ptr + offs_m, mask=m_mask, other=0).to(tl.int64)
    else:
        rows = offs_m.to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if PACKED:
        n_mask = offs_n < n_slices * rank
    else:
        n_mask = (offs_n < n_slices * R) & ((offs_n % R) < rank)
    k_start, k_len = split_k_range(tl.program_id(2), K, K_PER_SPLIT)
    offs_k = k_start + tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]
    a_ptrs = (a_ptr + slot.to(tl.int64) * stride_as
              + offs_n[None, :].to(tl.int64) * stride_an + offs_k[:, None])
    acc = masked_tile_dot(x_ptrs, a_ptrs, m_mask, n_mask, k_len, BLOCK_M, BLOCK_N, BLOCK_K)
    tile = seg * tl.num_programs(0) + pid
    split_k_finish(acc, y_ptr + rows[:, None] * stride_ym + offs_n[None, :],
                   part_ptr + rows[:, None] * stride_pm + offs_n[None, :], stride_pp,
                   m_mask[:, None] & n_mask[None, :], counter_ptr + tile, n_splits, SPLIT)


def _check(x, a, y, n_slices):
    assert x.dim() == 2 and a.dim() == 3 and y.dim() == 2, (x.shape, a.shape, y.shape)
    assert a.shape[1] % n_slices == 0, "a.shape[1] must be n_slices * max_rank"
    assert x.shape[1] == a.shape[2], (x.shape, a.shape)
    assert y.shape[1] >= a.shape[1] and y.shape[0] >= x.shape[0], (y.shape, a.shape)
    assert x.stride(1) == 1 and a.stride(2) == 1 and y.stride(1) == 1


def sgmv_shrink(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, batch: LoraBatch,
                n_slices: int = 1, packed_slices: bool = True,
                config: Optional[dict] = None) -> torch.Tensor:
    """Triton launcher; writes `y` in place and returns it.

    Semantics: see the module docstring (y[t, slice i] = x[t] @ A_i[slot]^T).
    Shape: x [T, K]; a [n_slots, n_slices*R, K]; y [T, n_slices*R] (caller-owned);
    batch: segments, or token_slots (run as batch.by_slot(T): one segment per slot).
    config: block sizes and SPLIT_K instead of the table's (tuning, tests).
    """
    if batch.is_bgmv and x.shape[0]:
        batch = batch.by_slot(x.shape[0])
    # host values as Python types: numpy's 3 equals 3 in a key, but Triton refuses it
    n_slices, packed_slices = int(n_slices), bool(packed_slices)
    key = (x.shape, x.stride(), x.dtype, a.shape, a.stride(), a.dtype, y.shape, y.stride(), y.dtype,
           x.device, batch.launch_key, n_slices, packed_slices)
    plan = _PLANS.get(key, MISSING) if config is None else MISSING
    fresh = plan is MISSING
    if fresh:
        plan = _plan(x, a, y, batch, n_slices, packed_slices, config)
    if plan is not None:
        if plan.extra is None:
            part, counters = y, batch.ranks  # untouched unsplit
        else:
            part, counters = WORKSPACE.get(x.device, *plan.extra)
        perm = batch.permutation
        _sgmv_shrink_kernel.launch_planned(plan, (
            x, a, y, part, counters, batch.seg_indptr, batch.seg_slots,
            perm if perm is not None else batch.seg_indptr, batch.ranks))
    if fresh and config is None:  # kept once it launched
        _PLANS.keep(key, plan)
    return y


_PLANS = LaunchPlans()  # by shapes, strides, dtypes, device, batch.launch_key, n_slices, packing


def _plan(x, a, y, batch: LoraBatch, n_slices: int, packed_slices: bool,
          config: Optional[dict]) -> Optional[LaunchPlan]:
    """Everything of a launch but the pointers (None: nothing to launch); checks the shapes."""
    _check(x, a, y, n_slices)
    T, K = x.shape
    N = a.shape[1]
    R = N // n_slices
    if T == 0 or N == 0 or batch.num_segments == 0 or batch.max_seg_len == 0:
        return None
    rows = batch.rows_hint or batch.max_seg_len
    cfg = config or get_config("sgmv_shrink", x.device, K=K, R=R, S=n_slices, M=rows)
    n_tiles = cdiv(N, cfg["BLOCK_N"])
    m_tiles = cdiv(batch.max_seg_len, cfg["BLOCK_M"])
    tiles = m_tiles * n_tiles * batch.num_segments
    # splits for the tiles expected to hold rows (all of them, unless by_slot's hint)
    split = split_for(cfg, K, cdiv(rows, cfg["BLOCK_M"]) * n_tiles * batch.num_segments,
                      x.device)
    stride_pp, stride_pm = (T * N, N) if split > 1 else (0, 0)
    return LaunchPlan(
        (m_tiles * n_tiles, batch.num_segments, split),
        (K, R, n_slices, split, k_per_split(K, split, cfg["BLOCK_K"]), n_tiles,
         x.stride(0), a.stride(0), a.stride(1), y.stride(0), stride_pp, stride_pm),
        dict(PACKED=packed_slices, HAS_PERM=batch.permutation is not None, SPLIT=split > 1,
             BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
             **launch_kwargs(cfg)),
        extra=(split * T * N, tiles) if split > 1 else None)


def slice_columns(ranks: torch.Tensor, n_slices: int, R: int, packed: bool) -> torch.Tensor:
    """bool [L, n_slices*R]: which shrink output columns a row of rank r owns.

    Example: R=4, n_slices=2, r=2 -> packed [1,1,1,1,0,0,0,0],
    unpacked [1,1,0,0,1,1,0,0].
    """
    col = torch.arange(n_slices * R, device=ranks.device)
    r = ranks.long()[:, None]
    if packed:
        return col[None, :] < n_slices * r
    return (col[None, :] % R) < r


def sgmv_shrink_ref(x: torch.Tensor, a: torch.Tensor, y: torch.Tensor, batch: LoraBatch,
                    n_slices: int = 1, packed_slices: bool = True) -> torch.Tensor:
    """Plain-torch reference of `sgmv_shrink` (gather + einsum, fp32 accumulate).

    Semantics and Shape: as `sgmv_shrink`; also the CPU serving path.
    """
    _check(x, a, y, n_slices)
    N = a.shape[1]
    R = N // n_slices
    rows, slots = batch.live_rows(x.shape[0])
    if rows.numel() == 0 or N == 0:
        return y
    ranks = batch.ranks.long()[slots].clamp(max=R)
    w = a[slots].float()                                   # [L, N, K] gather
    yv = torch.einsum("lk,lnk->ln", x[rows].float(), w)    # [L, N]
    mask = slice_columns(ranks, n_slices, R, packed_slices)
    cur = y[rows, :N]
    y[rows, :N] = torch.where(mask, yv.to(y.dtype), cur)
    return y
