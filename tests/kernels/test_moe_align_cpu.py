"""The pure-torch moe_align_block_size (moe_cpu.py gap 2) against SGLang's own Triton reference.

SGLang's reference (``sglang.test.kernels.moe_align``) runs interpreted on CPU
(tests/conftest.py sets TRITON_INTERPRET=1);
it has no "+1 bucket" for invalid experts, so it is called with the bucket
count ours uses (num_experts + 1) on ids shifted by one, exactly as the CUDA
kernel sees them.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sglang")

from sglang_mint.kernels.moe_align import moe_align_block_size_torch  # noqa: E402

CASES = [  # tokens, top_k, experts, block
    (1, 2, 8, 16), (7, 2, 8, 4), (77, 2, 8, 16), (199, 8, 64, 16), (33, 1, 3, 64), (5, 4, 128, 64),
]


def sglang_reference(topk_ids, block, experts):
    from sglang.test.kernels.moe_align import moe_align_block_size_triton

    shifted = (topk_ids + 1).to(torch.int32).contiguous()
    buckets = experts + 1
    numel = topk_ids.numel()
    max_padded = numel + buckets * (block - 1)
    sorted_ids = torch.full((max_padded,), numel, dtype=torch.int32)
    expert_ids = torch.full(((max_padded + block - 1) // block,), -7, dtype=torch.int32)
    post = torch.empty(1, dtype=torch.int32)
    moe_align_block_size_triton(shifted, buckets, block, sorted_ids, expert_ids, post)
    return sorted_ids, expert_ids - 1, post


@pytest.mark.parametrize("tokens,top_k,experts,block", CASES)
def test_matches_sglang_triton_reference(tokens, top_k, experts, block):
    g = torch.Generator().manual_seed(tokens * 1000 + experts)
    topk_ids = torch.stack([torch.randperm(experts, generator=g)[:top_k] for _ in range(tokens)]).to(torch.int32)
    ours = moe_align_block_size_torch(topk_ids, block, experts)
    ref = sglang_reference(topk_ids, block, experts)
    total = int(ref[2][0])
    assert int(ours[2][0]) == total
    assert torch.equal(ours[0][:total], ref[0][:total])
    assert torch.equal(ours[1][: total // block], ref[1][: total // block])
    # every route appears exactly once; padding holds numel
    real = ours[0][:total]
    assert sorted(real[real < topk_ids.numel()].tolist()) == list(range(topk_ids.numel()))


def test_invalid_experts_in_bucket_zero_or_ignored():
    topk_ids = torch.tensor([[2, -1], [0, 2], [-1, 1]], dtype=torch.int32)
    sorted_ids, expert_ids, post = moe_align_block_size_torch(topk_ids, 2, 4)
    # bucket 0 (expert -1): routes 1, 4; then expert 0: 2; expert 1: 5; expert 2: 0, 3
    assert sorted_ids[: int(post[0])].tolist() == [1, 4, 2, 6, 5, 6, 0, 3]
    assert expert_ids[:4].tolist() == [-1, 0, 1, 2]
    sorted_ids, expert_ids, post = moe_align_block_size_torch(topk_ids, 2, 4, ignore_invalid_expert=True)
    assert sorted_ids[: int(post[0])].tolist() == [2, 6, 5, 6, 0, 3]
    assert expert_ids[:3].tolist() == [0, 1, 2]
