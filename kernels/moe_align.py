"""SGLang's ``moe_align_block_size`` contract in plain torch: the CPU stand-in for its CUDA op.

Routed (token, expert) pairs are grouped into expert buckets padded to a
multiple of the MoE kernel's block size, the layout the fused MoE kernels read.
Checked against SGLang's own Triton reference in tests/kernels/test_moe_align_cpu.py.
"""

from __future__ import annotations

import torch


def moe_align_block_size_torch(topk_ids: torch.Tensor, block_size: int, num_experts: int,
                               ignore_invalid_expert: bool = False):
    """SGLang's ``moe_align_block_size`` contract in plain torch (CPU).

    Semantics (the CUDA kernel's "+1 bucket" convention, which SGLang calls
    with ``num_experts + 1`` buckets): a route to expert ``e`` falls in bucket
    ``e + 1``; bucket 0 holds routes to ``-1`` (experts filtered out by EP),
    or nothing with ``ignore_invalid_expert``. Buckets are laid out in order,
    each padded to a multiple of ``block_size``; within a bucket the flat
    route indices ascend; pad entries hold ``numel``:

        sorted_ids[cumsum[b] : cumsum[b] + count[b]] = routes of bucket b, ascending
        expert_ids[blk] = (bucket of block blk) - 1
        num_tokens_post_pad[0] = cumsum[-1]

    Example: topk_ids [[2, 3], [1, 2]], block 2, 4 experts: flat [2, 3, 1, 2]
    give sorted_ids [2, 4, 0, 3, 1, 4, ...], expert_ids [1, 2, 3],
    num_tokens_post_pad [6].

    Shape: topk_ids [M, top_k] int; returns sorted_ids [P] int32 (P the same
    upper bound SGLang allocates), expert_ids [ceil(P / block_size)] int32
    (-1 past the last block), num_tokens_post_pad [1] int32.
    """
    numel = topk_ids.numel()
    buckets = num_experts + 1
    if numel < buckets:
        max_padded = numel * block_size
    else:
        max_padded = numel + buckets * (block_size - 1)
    max_padded = (max_padded + 3) // 4 * 4
    dev = topk_ids.device
    flat = topk_ids.reshape(-1).to(torch.int64) + 1
    counts = torch.bincount(flat, minlength=buckets)[:buckets]
    if ignore_invalid_expert:
        counts[0] = 0
    padded = (counts + block_size - 1) // block_size * block_size
    ends = torch.cumsum(padded, 0)
    starts = ends - padded
    order = torch.argsort(flat, stable=True)
    keep = flat[order]
    if ignore_invalid_expert:
        order, keep = order[keep > 0], keep[keep > 0]
    # rank of each route inside its bucket: 0, 1, 2... after the stable sort
    first = torch.cumsum(counts, 0) - counts
    rank = torch.arange(order.numel(), device=dev) - first[keep]
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32, device=dev)
    sorted_ids[starts[keep] + rank] = order.to(torch.int32)
    n_blocks = (max_padded + block_size - 1) // block_size
    expert_ids = torch.full((n_blocks,), -1, dtype=torch.int32, device=dev)
    total = int(ends[-1])
    blk_start = torch.arange(total // block_size, device=dev) * block_size
    expert_ids[: blk_start.numel()] = (torch.searchsorted(ends, blk_start, right=True) - 1).to(torch.int32)
    num_tokens_post_pad = torch.tensor([total], dtype=torch.int32, device=dev)
    return sorted_ids, expert_ids, num_tokens_post_pad


def lora_align_sizes(n_routed: int, num_experts: int, block_m: int) -> tuple[int, int]:
    """(padded pairs, m blocks) of SGLang's pure-Python LoRA MoE alignment: every expert's bucket
    padded to ``block_m``, e.g. 5 pairs, 2 experts, block 4 -> 5 + 2*3 = 11 -> (12, 3)."""
    padded = (n_routed + num_experts * (block_m - 1) + block_m - 1) // block_m * block_m
    return padded, padded // block_m
