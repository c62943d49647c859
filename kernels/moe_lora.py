"""LoRA on routed MoE experts, grouped by (slot, expert) after routing.

Semantics (SGLang's fused_moe_lora, lora_moe_runners.py hooks):
    P = M * top_k; pair p = m * top_k + k routes token m to expert e = topk_ids[m, k]
    R = a.shape[2] // n_slices; W = b.shape[2] // n_slices   # padded rank, slice width
    for every pair p with s = token_slots[m] >= 0, r = ranks[s] > 0, 0 <= e < E:
        xr = x[p] if x.shape[0] == P (down: already expanded) else x[m]   (gate_up)
        ea, eb = (0 if a.shape[1] == 1 else e), (0 if b.shape[1] == 1 else e)
        for i in range(n_slices):                      # gate, up  (down: 1 slice)
            h = xr @ a[s, ea, i*R : i*R+r, :]^T        # slices spaced by R
            d = h @ b[s, eb, i*W : (i+1)*W, :r]^T
            out[m, k, i*W : (i+1)*W] += (topk_weights[m, k] if mul_routed_weight else 1) * d
    pairs of other tokens, dropped experts (e < 0, e.g. not on this EP rank) are
    untouched. No per-slot scaling: SGLang's pool stores MoE B pre-scaled.

`a.shape[1] == 1` is SGLang's shared-outer layout (experts_shared_outer_loras):
gate_up A [n_slots, 1, 2R, hidden] shared by all experts; for down it is
B [n_slots, 1, hidden, R]. Both are read with expert stride 0, never expanded.

Shape:
    x            [M, K] (gate_up) or [M*top_k, K] (down)
    a            [n_slots, E or 1, n_slices*R, K]
    b            [n_slots, E or 1, n_slices*W, R]
    out          [M, top_k, >= n_slices*W]  caller-owned, accumulated in place
                 (dims 0 and 1 must flatten: out.stride(0) == top_k*out.stride(1))
    topk_ids     [M, top_k] int;   topk_weights [M, top_k] float
    token_slots  [M] int32 (-1 = no adapter);  ranks [n_slots] int
    plan         MoeLoraPlan from moe_plan.moe_lora_plan() (built once per MoE layer
                 and forward, shared by its gate_up and down calls)
    y            [n_slices, P, R] optional caller-owned intermediate
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._tiles import masked_tile_dot

from ._config import cdiv, get_config, launch_kwargs
from ._launch import MISSING, FastLaunch, LaunchPlan, LaunchPlans
from .moe_plan import MoeLoraPlan, moe_lora_plan


@FastLaunch
@triton.jit
def _moe_lora_shrink_kernel(
    x_ptr, a_ptr, y_ptr, sorted_pairs_ptr, block_slot_ptr, block_expert_ptr, ranks_ptr,
    P, K, R, X_ROW_DIV, num_n_tiles,
    stride_xm, stride_as, stride_ae, stride_an, stride_ys, stride_yp,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid = (max_blocks * r_tiles, n_slices): y[i, pairs of block] = x @ A_i^T
    sl = tl.program_id(1)
    blk = tl.program_id(0) // num_n_tiles
    pid_n = tl.program_id(0) % num_n_tiles
    slot = tl.load(block_slot_ptr + blk)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot).to(tl.int32), R)
    expert = tl.load(block_expert_ptr + blk).to(tl.int64)
    pairs = tl.load(sorted_pairs_ptr + blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_mask = pairs < P
    rows = pairs // X_ROW_DIV
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < rank
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows[:, None] * stride_xm + offs_k[None, :]
    a_ptrs = (a_ptr + slot.to(tl.int64) * stride_as + expert * stride_ae
              + (sl * R + offs_n[None, :]).to(tl.int64) * stride_an + offs_k[:, None])
    acc = masked_tile_dot(x_ptrs, a_ptrs, m_mask, n_mask, K, BLOCK_M, BLOCK_N, BLOCK_K)
    y_ptrs = y_ptr + sl * stride_ys + pairs[:, None] * stride_yp + offs_n[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & n_mask[None, :])


@FastLaunch
@triton.jit
def _moe_lora_expand_kernel(
    y_ptr, b_ptr, out_ptr, w_ptr, sorted_pairs_ptr, block_slot_ptr, block_expert_ptr,
    ranks_ptr,
    P, R, W, num_n_tiles,
    stride_ys, stride_yp, stride_bs, stride_be, stride_bn, stride_op,
    MUL_ROUTED_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # grid = (max_blocks * n_tiles, n_slices): out[pairs, slice i tile] += y_i @ B_i^T
    sl = tl.program_id(1)
    blk = tl.program_id(0) // num_n_tiles
    pid_n = tl.program_id(0) % num_n_tiles
    slot = tl.load(block_slot_ptr + blk)
    if slot < 0:
        return
    rank = tl.minimum(tl.load(ranks_ptr + slot).to(tl.int32), R)
    expert = tl.load(block_expert_ptr + blk).to(tl.int64)
    pairs = tl.load(sorted_pairs_ptr + blk * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    m_mask = pairs < P
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_mask = offs_n < W
    cols = sl * W + offs_n
    offs_k = tl.arange(0, BLOCK_K)
    y_ptrs = y_ptr + sl * stride_ys + pairs[:, None] * stride_yp + offs_k[None, :]
    b_ptrs = (b_ptr + slot.to(tl.int64) * stride_bs + expert * stride_be
              + cols[None, :].to(tl.int64) * stride_bn + offs_k[:, None])
    acc = masked_tile_dot(y_ptrs, b_ptrs, m_mask, n_mask, rank, BLOCK_M, BLOCK_N, BLOCK_K)
    if MUL_ROUTED_WEIGHT:
        wt = tl.load(w_ptr + pairs, mask=m_mask, other=0.0).to(tl.float32)
        acc *= wt[:, None]
    o_ptrs = out_ptr + pairs[:, None] * stride_op + cols[None, :]
    o_mask = m_mask[:, None] & n_mask[None, :]
    acc += tl.load(o_ptrs, mask=o_mask, other=0.0).to(tl.float32)
    tl.store(o_ptrs, acc.to(out_ptr.dtype.element_ty), mask=o_mask)


def _check(out, x, a, b, topk_ids, n_slices):
    M, top_k = topk_ids.shape
    assert a.dim() == 4 and b.dim() == 4 and out.dim() == 3, (a.shape, b.shape, out.shape)
    assert out.shape[0] == M and out.shape[1] == top_k, (out.shape, topk_ids.shape)
    assert x.shape[0] in (M, M * top_k) and x.shape[1] == a.shape[3], (x.shape, a.shape)
    assert a.shape[2] % n_slices == 0 and b.shape[2] % n_slices == 0
    assert a.shape[2] // n_slices == b.shape[3], "A rows per slice must equal B's rank dim"
    assert out.shape[2] >= b.shape[2]
    assert out.stride(0) == top_k * out.stride(1) and out.stride(2) == 1
    assert x.stride(1) == 1 and a.stride(3) == 1 and b.stride(3) == 1


def moe_lora(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
             topk_ids: torch.Tensor, topk_weights: torch.Tensor, token_slots: torch.Tensor,
             ranks: torch.Tensor, *, n_slices: int, mul_routed_weight: bool = False,
             n_experts: Optional[int] = None, plan: Optional[MoeLoraPlan] = None,
             y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Triton launcher (shrink then expand); accumulates into `out`, returns it.

    Semantics and Shape: see the module docstring. gate_up: n_slices=2,
    mul_routed_weight=False; down: n_slices=1, mul_routed_weight=True.
    The two launches are planned once per shape (_PLANS: the checks, block sizes, grids and
    int arguments), as the dense launchers' are (kernels/_launch.py).
    """
    # host values as Python types: numpy's 2 equals 2 in a key, but Triton refuses it
    n_slices, mul_routed_weight = int(n_slices), bool(mul_routed_weight)
    M, top_k = topk_ids.shape
    P, R = M * top_k, b.shape[3]
    if P == 0 or R == 0:
        _check(out, x, a, b, topk_ids, n_slices)
        return out
    if plan is None:
        E = n_experts if n_experts is not None else max(a.shape[1], b.shape[1])
        plan = moe_lora_plan(topk_ids, token_slots, ranks, E)
    if y is None:
        y = torch.empty((n_slices, P, R), dtype=x.dtype, device=x.device)
    key = (x.shape, x.stride(), x.dtype, a.shape, a.stride(), a.dtype, b.shape, b.stride(), b.dtype,
           out.shape, out.stride(), out.dtype, y.shape, y.stride(), y.dtype, topk_ids.shape,
           topk_weights.dtype, ranks.dtype, x.device, plan.num_pairs, plan.top_k, plan.block_m,
           plan.block_slot.numel(), n_slices, mul_routed_weight)
    plans = _PLANS.get(key, MISSING)
    fresh = plans is MISSING
    if fresh:
        plans = _plan(out, x, a, b, y, topk_ids, plan, n_slices, mul_routed_weight)
    shrink, expand = plans
    _moe_lora_shrink_kernel.launch_planned(shrink, (
        x, a, y, plan.sorted_pairs, plan.block_slot, plan.block_expert, ranks))
    _moe_lora_expand_kernel.launch_planned(expand, (
        y, b, out, topk_weights, plan.sorted_pairs, plan.block_slot, plan.block_expert, ranks))
    if fresh:  # kept once it launched
        _PLANS.keep(key, plans)
    return out


_PLANS = LaunchPlans()  # by shapes, strides, dtypes, device, the plan's sizes, n_slices, routed weight


def _plan(out, x, a, b, y, topk_ids, plan: MoeLoraPlan, n_slices: int,
          mul_routed_weight: bool) -> tuple[LaunchPlan, LaunchPlan]:
    """The shrink's and the expand's launches but their pointers; checks the shapes."""
    _check(out, x, a, b, topk_ids, n_slices)
    M, top_k = topk_ids.shape
    P, R, K = M * top_k, b.shape[3], x.shape[1]
    W = b.shape[2] // n_slices
    assert plan.num_pairs == P and plan.top_k == top_k, (plan.num_pairs, plan.top_k, topk_ids.shape)
    assert y.shape == (n_slices, P, R) and y.stride(2) == 1, (y.shape, y.stride())
    BM, max_blocks = plan.block_m, plan.block_slot.numel()
    xdiv = 1 if (x.shape[0] == P and top_k > 1) else top_k
    cs = get_config("moe_lora_shrink", x.device, K=K, R=R, S=n_slices, M=P)
    n_r = cdiv(R, cs["BLOCK_N"])
    shrink = LaunchPlan(
        (max_blocks * n_r, n_slices),
        (P, K, R, xdiv, n_r, x.stride(0), a.stride(0), 0 if a.shape[1] == 1 else a.stride(1), a.stride(2),
         y.stride(0), y.stride(1)),
        dict(BLOCK_M=BM, BLOCK_N=cs["BLOCK_N"], BLOCK_K=cs["BLOCK_K"], **launch_kwargs(cs)))
    ce = get_config("moe_lora_expand", x.device, K=W, R=R, S=n_slices, M=P)
    n_n = cdiv(W, ce["BLOCK_N"])
    expand = LaunchPlan(
        (max_blocks * n_n, n_slices),
        (P, R, W, n_n, y.stride(0), y.stride(1), b.stride(0), 0 if b.shape[1] == 1 else b.stride(1),
         b.stride(2), out.stride(1)),
        dict(MUL_ROUTED_WEIGHT=mul_routed_weight, BLOCK_M=BM, BLOCK_N=ce["BLOCK_N"], BLOCK_K=ce["BLOCK_K"],
             **launch_kwargs(ce)))
    return shrink, expand


def moe_lora_ref(out: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                 topk_ids: torch.Tensor, topk_weights: torch.Tensor, token_slots: torch.Tensor,
                 ranks: torch.Tensor, *, n_slices: int, mul_routed_weight: bool = False,
                 n_experts: Optional[int] = None, plan: Optional[MoeLoraPlan] = None,
                 y: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-torch reference of `moe_lora` (gather + einsum, fp32 accumulate).

    Semantics and Shape: as `moe_lora` (`plan` and `y` are ignored); also the
    CPU serving path.
    """
    _check(out, x, a, b, topk_ids, n_slices)
    M, top_k = topk_ids.shape
    P = M * top_k
    R = b.shape[3]
    W = b.shape[2] // n_slices
    E = n_experts if n_experts is not None else max(a.shape[1], b.shape[1])
    if P == 0 or R == 0:
        return out
    slot = token_slots[:M].long()[:, None].expand(M, top_k).reshape(-1)
    e = topk_ids.reshape(-1).long()
    valid = (slot >= 0) & (e >= 0) & (e < E)
    valid &= ranks.long()[slot.clamp(min=0)] > 0
    p = valid.nonzero().flatten()
    if p.numel() == 0:
        return out
    s, e = slot[p], e[p]
    xr = x[p if (x.shape[0] == P and top_k > 1) else p // top_k].float()      # [L, K]
    r = ranks.long()[s].clamp(max=R)
    kmask = torch.arange(R, device=x.device)[None, :] < r[:, None]             # [L, R]
    ea = torch.zeros_like(e) if a.shape[1] == 1 else e
    eb = torch.zeros_like(e) if b.shape[1] == 1 else e
    delta = torch.empty(p.numel(), n_slices * W, dtype=torch.float32, device=x.device)
    for i in range(n_slices):
        ai = a[s, ea, i * R:(i + 1) * R, :].float()                            # [L, R, K]
        h = torch.where(kmask, torch.einsum("lk,lrk->lr", xr, ai), 0.0)
        bi = torch.where(kmask[:, None, :], b[s, eb, i * W:(i + 1) * W, :].float(), 0.0)
        delta[:, i * W:(i + 1) * W] = torch.einsum("lr,lwr->lw", h, bi)
    if mul_routed_weight:
        delta *= topk_weights.reshape(-1)[p].float()[:, None]
    flat = out.view(P, out.shape[2])
    flat[p, : n_slices * W] = (flat[p, : n_slices * W].float() + delta).to(out.dtype)
    return out
