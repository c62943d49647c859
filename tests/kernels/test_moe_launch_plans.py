"""Planned MoE launches (kernels/moe_lora.py ``_PLANS``): one plan per shape key, then launches from it.

A key that misses something the plan depends on (a grid, a stride, a constexpr) gives a stale launch
and wrong results. Under the interpreter, calls one after another, each one part of the key away from
the one before, must each equal the reference (kernels/_launch.py's launch itself is tested with the
dense launchers, tests/kernels/test_launch_plans.py).
"""

import importlib

import pytest
import torch

from kernel_cases import assert_close, randn
from sglang_mint.kernels import moe_lora, moe_lora_plan, moe_lora_ref

moe_module = importlib.import_module("sglang_mint.kernels.moe_lora")

K, W = 48, 40

# each case differs from the one before it in one part of the key
CASES = {
    "base": dict(M=9, top_k=2, E=8, ranks=[8, 4, 0]),
    "tokens": dict(M=23, top_k=2, E=8, ranks=[8, 4, 0]),
    "top_k": dict(M=23, top_k=3, E=8, ranks=[8, 4, 0]),
    "experts": dict(M=23, top_k=3, E=16, ranks=[8, 4, 0]),
    "slots": dict(M=23, top_k=3, E=16, ranks=[8, 4, 0, 2, 8]),
    "rank dim": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8]),
    "row stride": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], x_pad=16),
    "shared outer": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], shared=True),
    "one slice": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], n_slices=1),
    "routed weight": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], n_slices=1, routed=True),
    "pair rows": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], n_slices=1, routed=True, pair_rows=True),
    "block size": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], block_m=32),
    # fp16: the interpreter's tl.dot gets bf16 wrong (the same call is right on a GPU)
    "dtype": dict(M=23, top_k=3, E=16, ranks=[16, 4, 0, 2, 8], dtype=torch.float16),
}


def _call(gen, M, top_k, E, ranks, n_slices=2, routed=False, pair_rows=False, shared=False, x_pad=0,
          block_m=None, dtype=torch.float32):
    R, n = max(ranks), len(ranks)
    ids = torch.stack([torch.randperm(E, generator=gen)[:top_k] for _ in range(M)]).int()
    slots = torch.randint(-1, n, (M,), generator=gen).int()
    slots[0] = 0
    ranks_t = torch.tensor(ranks, dtype=torch.int32)
    rows = M * top_k if pair_rows else M
    x = randn(rows, K + x_pad, gen=gen).to(dtype)[:, :K]
    a = randn(n, 1 if shared else E, n_slices * R, K, gen=gen).to(dtype)
    b = randn(n, E, n_slices * W, R, gen=gen).to(dtype)
    w = torch.rand(M, top_k, generator=gen).to(dtype)
    out = randn(M, top_k, n_slices * W, gen=gen).to(dtype)
    plan = moe_lora_plan(ids, slots, ranks_t, E, block_m=block_m)
    args = (x, a, b, ids, w, slots, ranks_t)
    kw = dict(n_slices=n_slices, mul_routed_weight=routed, n_experts=E)
    return out, args, kw, plan


@pytest.mark.interp
def test_moe_plans_follow_every_part_of_the_shape():
    gen = torch.Generator().manual_seed(11)
    moe_module._PLANS.clear()
    for name, case in CASES.items():
        out, args, kw, plan = _call(gen, **case)
        got, want = out.clone(), out.clone()
        moe_lora(got, *args, plan=plan, **kw)
        moe_lora_ref(want, *args, **kw)
        assert not torch.equal(want, out), name  # the call changes something, so the check can fail
        assert_close(got, want, case.get("dtype", torch.float32))
    assert len(moe_module._PLANS) == len(CASES)  # one plan per case: each is a new key


@pytest.mark.interp
def test_a_repeat_shape_launches_from_its_plan_with_new_tensors():
    gen = torch.Generator().manual_seed(12)
    moe_module._PLANS.clear()
    for _ in range(3):  # same key, fresh tensors and routing each time
        out, args, kw, plan = _call(gen, **CASES["tokens"])
        got, want = out.clone(), out.clone()
        moe_lora(got, *args, plan=plan, **kw)
        moe_lora_ref(want, *args, **kw)
        assert_close(got, want)
    assert len(moe_module._PLANS) == 1
