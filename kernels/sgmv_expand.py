"""LoRA expand: out[:, slice i] += scale[slot] * y[:, slice i] @ B_i[slot]^T.

Semantics:
    R = b.shape[2]                                   # padded max rank
    n_slices = len(slice_offsets) - 1                # widths may differ
    for every physical row t with slot s = slot(t) >= 0 and r = ranks[s] > 0:
        for i in range(n_slices):
            c = i * (r if packed_slices else R)      # y columns of slice i
            lo, hi = slice_offsets[i], slice_offsets[i + 1]
            out[t, lo:hi] += scalings[s] * (y[t, c:c+r] @ b[s, lo:hi, :r]^T)
    other rows of out are untouched; b[:, :, r:] is never read (may be garbage).

ACCUMULATES into `out` (the base layer's output) in place, fp32 math, one
rounding to out.dtype per element. Unequal slice widths, e.g. DeepSeek MLA's
fused q_a_proj (1536) + kv_a_proj_with_mqa (576): slice_offsets [0, 1536, 2112].

Shape:
    y              [T, n_slices*R]       shrink output (sgmv_shrink's y)
    b              [n_slots, out_total, R]  LoRA B pool (contiguous last dim)
    out            [T, >= out_total]     caller-owned; a strided view of a wider
                                         base output is fine (unit column stride)
    slice_offsets  [n_slices + 1] int32  on the device; slice_offsets[-1] <= out_total
    slice_offsets_cpu: the same offsets as a host tuple/list/tensor (grid sizing,
                   no device sync); optional, read from the device when absent
    batch: LoraBatch                     segments (sgmv) or token_slots (bgmv)
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import triton
import triton.language as tl

from ._tiles import masked_tile_dot

from ._config import cdiv, get_config, launch_kwargs
from ._launch import MISSING, FastLaunch, LaunchPlan, LaunchPlans
from .batch import LoraBatch


@FastLaunch
@triton.jit
def _sgmv_expand_kernel(
    y_ptr, b_ptr, out_ptr,
    seg_indptr_ptr, seg_slots_ptr, perm_ptr, ranks_ptr, scalings_ptr, offsets_ptr,
    R, num_n_tiles,
    stride_ym, stride_bs, stride_bn, stride_om,
    PACKED: tl.constexpr, HAS_PERM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid = (m_tiles * n_tiles_of_widest_slice, n_slices, n_segments)
    seg = tl.program_id(2)
    sl = tl.program_id(1)
    pid = tl.program_id(0)
    pid_m = pid // num_n_tiles
    pid_n = pid % num_n_tiles
    slot = tl.load(seg_slots_ptr + seg)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot).to(tl.int32), R)
    if rank <= 0:
        return
    lo = tl.load(offsets_ptr + sl)
    hi = tl.load(offsets_ptr + sl + 1)
    if pid_n * BLOCK_N >= hi - lo:
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
    if PACKED:
        ycol0 = sl * rank
    else:
        ycol0 = sl * R
    offs_n = lo + pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < hi
    offs_k = tl.arange(0, BLOCK_K)
    y_ptrs = y_ptr + rows[:, None] * stride_ym + ycol0 + offs_k[None, :]
    b_ptrs = (b_ptr + slot.to(tl.int64) * stride_bs
              + offs_n[None, :].to(tl.int64) * stride_bn + offs_k[:, None])
    acc = masked_tile_dot(y_ptrs, b_ptrs, m_mask, n_mask, rank, BLOCK_M, BLOCK_N, BLOCK_K)
    acc *= tl.load(scalings_ptr + slot)
    o_ptrs = out_ptr + rows[:, None] * stride_om + offs_n[None, :]
    o_mask = m_mask[:, None] & n_mask[None, :]
    acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def _host_offsets(slice_offsets, slice_offsets_cpu) -> tuple:
    """The slice offsets as a tuple of host ints, from the host copy when there is one.
    Example: SGLang's qkv layer passes tensor([0, 4096, 5120, 6144])."""
    src = slice_offsets if slice_offsets_cpu is None else slice_offsets_cpu
    # Python ints, whatever they came as: numpy's equal ints would share a plan key, and Triton
    # refuses them as arguments
    return tuple(map(int, src.tolist() if torch.is_tensor(src) else src))


def _check(y, b, out, offs):
    assert y.dim() == 2 and b.dim() == 3 and out.dim() == 2, (y.shape, b.shape, out.shape)
    n_slices = len(offs) - 1
    assert n_slices >= 1 and offs[0] == 0 and offs[-1] <= b.shape[1], offs
    assert y.shape[1] >= n_slices * b.shape[2], (y.shape, b.shape, n_slices)
    assert out.shape[1] >= offs[-1] and out.shape[0] >= y.shape[0], (out.shape, offs)
    assert y.stride(1) == 1 and b.stride(2) == 1 and out.stride(1) == 1


def sgmv_expand(y: torch.Tensor, b: torch.Tensor, out: torch.Tensor, batch: LoraBatch,
                slice_offsets: torch.Tensor, slice_offsets_cpu: Optional[Sequence[int]] = None,
                packed_slices: bool = True, config: Optional[dict] = None) -> torch.Tensor:
    """Triton launcher; accumulates into `out` in place and returns it.

    Semantics: see the module docstring.
    Shape: y [T, n_slices*R]; b [n_slots, out_total, R]; out [T, >=out_total];
    slice_offsets [n_slices+1] int32 (device); batch: segments, or token_slots
    (run as batch.by_slot(T): one segment per slot).
    config: block sizes instead of the table's (tuning, tests).
    """
    offs = _host_offsets(slice_offsets, slice_offsets_cpu)
    if slice_offsets.device != y.device:
        slice_offsets = slice_offsets.to(y.device)
    if batch.is_bgmv and y.shape[0]:
        batch = batch.by_slot(y.shape[0])
    packed_slices = bool(packed_slices)
    key = (y.shape, y.stride(), y.dtype, b.shape, b.stride(), b.dtype, out.shape, out.stride(), out.dtype,
           slice_offsets.dtype, y.device, batch.launch_key, offs, packed_slices)
    plan = _PLANS.get(key, MISSING) if config is None else MISSING
    fresh = plan is MISSING
    if fresh:
        plan = _plan(y, b, out, batch, offs, packed_slices, config)
    if plan is not None:
        perm = batch.permutation
        _sgmv_expand_kernel.launch_planned(plan, (
            y, b, out, batch.seg_indptr, batch.seg_slots,
            perm if perm is not None else batch.seg_indptr, batch.ranks, batch.scalings, slice_offsets))
    if fresh and config is None:  # kept once it launched
        _PLANS.keep(key, plan)
    return out


_PLANS = LaunchPlans()  # by shapes, strides, dtypes, device, batch.launch_key, slice offsets, packing


def _plan(y, b, out, batch: LoraBatch, offs: tuple, packed_slices: bool,
          config: Optional[dict]) -> Optional[LaunchPlan]:
    """Everything of a launch but the pointers (None: nothing to launch); checks the shapes."""
    _check(y, b, out, offs)
    T = y.shape[0]
    R = b.shape[2]
    n_slices = len(offs) - 1
    widest = max(hi - lo for lo, hi in zip(offs, offs[1:]))
    if T == 0 or R == 0 or widest == 0 or batch.num_segments == 0 or batch.max_seg_len == 0:
        return None
    cfg = config or get_config("sgmv_expand", y.device, K=widest, R=R, S=n_slices,
                               M=batch.rows_hint or batch.max_seg_len)
    n_tiles = cdiv(widest, cfg["BLOCK_N"])
    return LaunchPlan(
        (cdiv(batch.max_seg_len, cfg["BLOCK_M"]) * n_tiles, n_slices, batch.num_segments),
        (R, n_tiles, y.stride(0), b.stride(0), b.stride(1), out.stride(0)),
        dict(PACKED=packed_slices, HAS_PERM=batch.permutation is not None,
             BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=cfg["BLOCK_K"],
             **launch_kwargs(cfg)))


def sgmv_expand_ref(y: torch.Tensor, b: torch.Tensor, out: torch.Tensor, batch: LoraBatch,
                    slice_offsets: torch.Tensor, slice_offsets_cpu: Optional[Sequence[int]] = None,
                    packed_slices: bool = True) -> torch.Tensor:
    """Plain-torch reference of `sgmv_expand` (gather + einsum, fp32 accumulate).

    Semantics and Shape: as `sgmv_expand`; also the CPU serving path.
    """
    offs = _host_offsets(slice_offsets, slice_offsets_cpu)
    _check(y, b, out, offs)
    R = b.shape[2]
    rows, slots = batch.live_rows(y.shape[0])
    if rows.numel() == 0 or R == 0:
        return out
    ranks = batch.ranks.long()[slots].clamp(max=R)                 # [L]
    scale = batch.scalings.float()[slots]                          # [L]
    kmask = torch.arange(R, device=y.device)[None, :] < ranks[:, None]   # [L, R]
    delta = torch.zeros(rows.numel(), offs[-1], dtype=torch.float32, device=y.device)
    for i, (lo, hi) in enumerate(zip(offs, offs[1:])):
        c0 = i * (ranks if packed_slices else torch.full_like(ranks, R))
        cols = (c0[:, None] + torch.arange(R, device=y.device)[None, :]).clamp(max=y.shape[1] - 1)
        yi = torch.where(kmask, y[rows[:, None], cols].float(), 0.0)          # [L, R]
        bi = torch.where(kmask[:, None, :], b[slots, lo:hi, :].float(), 0.0)  # [L, W, R]
        delta[:, lo:hi] = torch.einsum("lr,lwr->lw", yi, bi)
    cur = out[rows, : offs[-1]].float()
    out[rows, : offs[-1]] = (cur + scale[:, None] * delta).to(out.dtype)
    return out
