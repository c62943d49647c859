"""The (slot, expert) plan of routed MoE LoRA: which pairs each block of ``moe_lora`` runs.

Semantics (P = M * top_k pairs; pair p = m * top_k + k, G = n_slots * E groups):
    key[p] = token_slots[m] * E + topk_ids[m, k]   when the slot is >= 0 with rank > 0 and
             0 <= topk_ids[m, k] < E;  else the pair is in no group
    group g holds count[g] pairs and blocks[g] = ceil(count[g] / block_m) blocks, laid out in
    order of g: its pairs fill sorted_pairs[start[g] * block_m :][:count[g]], the rest of its
    last block and every block past the last group hold P (padding);
    block_slot[b], block_expert[b] = g // E, g % E of the group block b belongs to, else -1.
    ``moe_lora_plan_ref`` keeps each group's pairs ascending; ``moe_lora_plan`` hands them out
    by atomics, in any order (every pair is one row of ``moe_lora``: the order changes no value).

Example (block_m=2, E=4): keys [5, 1, 5, 5] give sorted_pairs [1, P, 0, 2, 3, P] (or [1, P,
2, 0, 3, P], ...), block_slot [0, 1, 1], block_expert [1, 1, 1].

Sizes depend only on (P, G, block_m), so the same buffers serve a CUDA graph replay, and no
step syncs with the host. ``moe_lora_plan`` is four launches (a memset and three kernels)
where the torch form is about twenty-five: one plan per MoE layer, shared by its gate_up and
down calls, runs on every forward.

Shape: topk_ids [M, top_k] int; token_slots [>= M] int; ranks [n_slots] int;
    sorted_pairs [max_blocks * block_m] int32; block_slot, block_expert [max_blocks] int32,
    max_blocks = ceil(P / block_m) + min(P, G).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ._config import cdiv, get_config
from ._launch import MISSING, FastLaunch, LaunchPlan, LaunchPlans

PAIRS_PER_PROGRAM = 1024
GROUPS_PER_STEP = 1024


@dataclass
class MoeLoraPlan:
    """Pairs grouped by (slot, expert), each group padded to whole ``block_m`` blocks (module docstring)."""

    sorted_pairs: torch.Tensor
    block_slot: torch.Tensor
    block_expert: torch.Tensor
    block_m: int
    num_pairs: int
    top_k: int


def plan_sizes(P: int, n_slots: int, n_experts: int, block_m: int) -> tuple[int, int]:
    """(groups G, max_blocks): every group may end in a part-filled block, at most min(P, G) of them."""
    G = n_slots * n_experts
    return G, cdiv(P, block_m) + min(P, G)


def _block_m(topk_ids: torch.Tensor, block_m: Optional[int]) -> int:
    if block_m is not None:
        return block_m
    return get_config("moe_lora_shrink", topk_ids.device, M=topk_ids.numel())["BLOCK_M"]


@triton.jit
def _pair_keys(topk_ids_ptr, token_slots_ptr, ranks_ptr, pairs, P, TOP_K, E):
    """(key, valid) of each pair: its group slot * E + expert, valid as the module docstring says."""
    in_range = pairs < P
    expert = tl.load(topk_ids_ptr + pairs, mask=in_range, other=-1).to(tl.int32)
    slot = tl.load(token_slots_ptr + pairs // TOP_K, mask=in_range, other=-1).to(tl.int32)
    rank = tl.load(ranks_ptr + tl.maximum(slot, 0), mask=in_range & (slot >= 0), other=0)
    valid = in_range & (slot >= 0) & (rank > 0) & (expert >= 0) & (expert < E)
    return slot * E + expert, valid


@FastLaunch
@triton.jit
def _moe_plan_count_kernel(topk_ids_ptr, token_slots_ptr, ranks_ptr, counts_ptr, sorted_pairs_ptr,
                           P, TOP_K, E, n_padded, BLOCK: tl.constexpr):
    # grid = cdiv(max_blocks * block_m, BLOCK): count each group's pairs; every entry starts as padding
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(sorted_pairs_ptr + offs, tl.full([BLOCK], 0, tl.int32) + P, mask=offs < n_padded)
    key, valid = _pair_keys(topk_ids_ptr, token_slots_ptr, ranks_ptr, offs, P, TOP_K, E)
    tl.atomic_add(counts_ptr + key, tl.full([BLOCK], 1, tl.int32), mask=valid)


@FastLaunch
@triton.jit
def _moe_plan_scan_kernel(counts_ptr, block_end_ptr, G, BLOCK_M: tl.constexpr, STEP: tl.constexpr):
    # grid = (1,): block_end[g] = blocks of groups 0..g; counts[g] becomes group g's first position
    carry = tl.zeros([], tl.int32)
    for start in range(0, G, STEP):
        offs = start + tl.arange(0, STEP)
        mask = offs < G
        blocks = (tl.load(counts_ptr + offs, mask=mask, other=0) + BLOCK_M - 1) // BLOCK_M
        end = tl.cumsum(blocks, 0) + carry
        tl.store(block_end_ptr + offs, end, mask=mask)
        tl.store(counts_ptr + offs, (end - blocks) * BLOCK_M, mask=mask)
        carry += tl.sum(blocks, 0)


@FastLaunch
@triton.jit
def _moe_plan_place_kernel(topk_ids_ptr, token_slots_ptr, ranks_ptr, next_pos_ptr, block_end_ptr,
                           sorted_pairs_ptr, block_slot_ptr, block_expert_ptr,
                           P, TOP_K, E, G, max_blocks, search_steps, BLOCK: tl.constexpr):
    # grid = cdiv(max(P, max_blocks), BLOCK): each pair takes the next place of its group;
    # each block finds its group: the first g with block_end[g] > block (a binary search)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    key, valid = _pair_keys(topk_ids_ptr, token_slots_ptr, ranks_ptr, offs, P, TOP_K, E)
    pos = tl.atomic_add(next_pos_ptr + key, tl.full([BLOCK], 1, tl.int32), mask=valid)
    tl.store(sorted_pairs_ptr + pos, offs, mask=valid)
    lo = tl.zeros([BLOCK], tl.int32)
    hi = tl.zeros([BLOCK], tl.int32) + G
    for _ in range(search_steps):
        mid = (lo + hi) // 2
        ends = tl.load(block_end_ptr + mid, mask=mid < hi, other=0)
        right = (mid < hi) & (ends <= offs)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(right, hi, mid)
    live = lo < G
    blocks = offs < max_blocks
    tl.store(block_slot_ptr + offs, tl.where(live, lo // E, -1), mask=blocks)
    tl.store(block_expert_ptr + offs, tl.where(live, lo % E, -1), mask=blocks)


def moe_lora_plan(topk_ids: torch.Tensor, token_slots: torch.Tensor, ranks: torch.Tensor,
                  n_experts: int, block_m: Optional[int] = None) -> MoeLoraPlan:
    """Triton launcher: group routed pairs by (slot, expert) (module docstring); no host sync.
    Its three launches are planned once per shape (_PLANS), as moe_lora's are."""
    M, top_k = topk_ids.shape
    dev = topk_ids.device
    # the kernels index each by its flat position (views with a stride are copied; no-ops otherwise)
    topk_ids, token_slots, ranks = topk_ids.contiguous(), token_slots[:M].contiguous(), ranks.contiguous()
    key = (topk_ids.shape, topk_ids.dtype, token_slots.dtype, ranks.shape, ranks.dtype, dev, int(n_experts), block_m)
    planned = _PLANS.get(key, MISSING)
    fresh = planned is MISSING
    if fresh:
        planned = _plan(topk_ids, ranks, int(n_experts), block_m)
    bm, G, max_blocks, launches = planned
    counts = torch.zeros(max(G, 1), dtype=torch.int32, device=dev)
    block_end = torch.empty(max(G, 1), dtype=torch.int32, device=dev)
    sorted_pairs = torch.empty(max_blocks * bm, dtype=torch.int32, device=dev)
    block_slot = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    block_expert = torch.empty(max_blocks, dtype=torch.int32, device=dev)
    if launches is not None:
        count, scan, place = launches
        _moe_plan_count_kernel.launch_planned(count, (topk_ids, token_slots, ranks, counts, sorted_pairs))
        _moe_plan_scan_kernel.launch_planned(scan, (counts, block_end))
        _moe_plan_place_kernel.launch_planned(place, (
            topk_ids, token_slots, ranks, counts, block_end, sorted_pairs, block_slot, block_expert))
    if fresh:  # kept once it launched
        _PLANS.keep(key, planned)
    return MoeLoraPlan(sorted_pairs, block_slot, block_expert, bm, M * top_k, top_k)


_PLANS = LaunchPlans()  # by routing shape, dtypes, slot count, device, experts and a given block size


def _plan(topk_ids: torch.Tensor, ranks: torch.Tensor, n_experts: int, block_m: Optional[int]) -> tuple:
    """(block_m, G, max_blocks, the three launches but their pointers; None without a pair)."""
    M, top_k = topk_ids.shape
    P = M * top_k
    bm = _block_m(topk_ids, block_m)
    G, max_blocks = plan_sizes(P, ranks.numel(), n_experts, bm)
    if P == 0:
        return bm, G, max_blocks, None
    return bm, G, max_blocks, (
        LaunchPlan((cdiv(max_blocks * bm, PAIRS_PER_PROGRAM),), (P, top_k, n_experts, max_blocks * bm),
                   dict(BLOCK=PAIRS_PER_PROGRAM)),
        LaunchPlan((1,), (G,), dict(BLOCK_M=bm, STEP=GROUPS_PER_STEP)),
        LaunchPlan((cdiv(max(P, max_blocks), PAIRS_PER_PROGRAM),),
                   (P, top_k, n_experts, G, max_blocks, G.bit_length()), dict(BLOCK=PAIRS_PER_PROGRAM)))


def moe_lora_plan_ref(topk_ids: torch.Tensor, token_slots: torch.Tensor, ranks: torch.Tensor,
                      n_experts: int, block_m: Optional[int] = None) -> MoeLoraPlan:
    """Plain torch, each group's pairs ascending (module docstring); the reference of ``moe_lora_plan``."""
    M, top_k = topk_ids.shape
    P, dev = M * top_k, topk_ids.device
    block_m = _block_m(topk_ids, block_m)
    G, max_blocks = plan_sizes(P, ranks.numel(), n_experts, block_m)
    slot = token_slots[:M].long()[:, None].expand(M, top_k).reshape(-1)
    e = topk_ids.reshape(-1).long()
    valid = (slot >= 0) & (e >= 0) & (e < n_experts)
    valid &= ranks.long()[slot.clamp(min=0)] > 0
    key = torch.where(valid, slot * n_experts + e, torch.full_like(e, G))
    order = torch.argsort(key, stable=True)
    skey = key[order]
    counts = torch.zeros(G + 1, dtype=torch.long, device=dev)
    counts.scatter_add_(0, key, torch.ones_like(key))
    counts[G] = 0
    blocks = (counts + block_m - 1) // block_m
    block_end = torch.cumsum(blocks, 0)
    block_start = block_end - blocks
    pair_start = torch.cumsum(counts, 0) - counts
    pos = block_start[skey] * block_m + (torch.arange(P, device=dev) - pair_start[skey])
    dump = max_blocks * block_m
    pos = torch.where(skey < G, pos, torch.full_like(pos, dump))
    sorted_pairs = torch.full((dump + 1,), P, dtype=torch.int32, device=dev)
    sorted_pairs.scatter_(0, pos, order.to(torch.int32))
    g = torch.searchsorted(block_end, torch.arange(max_blocks, device=dev), right=True)
    live = g < G
    block_slot = torch.where(live, g // n_experts, -1).to(torch.int32)
    block_expert = torch.where(live, g % n_experts, -1).to(torch.int32)
    return MoeLoraPlan(sorted_pairs[:dump], block_slot, block_expert, block_m, P, top_k)
