"""Routed-expert MoE LoRA kernel against its torch reference."""

import pytest
import torch

from kernel_cases import assert_close, randn
from sglang_mint.kernels import moe_lora, moe_lora_plan, moe_lora_plan_ref, moe_lora_ref


def _routing(M, top_k, E, n_slots, gen, device="cpu", drop=False):
    ids = torch.stack([torch.randperm(E, generator=gen)[:top_k] for _ in range(M)]).int()
    if drop and M > 1:
        ids[::3, -1] = -1        # experts not on this EP rank
    w = torch.rand(M, top_k, generator=gen)
    slots = torch.randint(-1, n_slots, (M,), generator=gen).int()
    if M >= n_slots + 1:
        slots[: n_slots + 1] = torch.arange(-1, n_slots)      # every slot + no adapter
    else:
        slots[0] = 0                                           # at least one live token
    return ids.to(device), w.to(device), slots.to(device)


def _moe_pool(n_slots, E, n_slices, R, K, W, ranks, shared, gen, dtype, device):
    """SGLang's MoE pool: slices spaced by R, zero beyond rank; B pre-scaled.

    shared='a': gate_up A [n_slots, 1, S*R, K]; shared='b': down B [n_slots, 1, S*W, R].
    """
    a = randn(n_slots, 1 if shared == "a" else E, n_slices * R, K, gen=gen)
    b = randn(n_slots, 1 if shared == "b" else E, n_slices * W, R, gen=gen)
    for s, r in enumerate(ranks):
        for i in range(n_slices):
            a[s, :, i * R + r:(i + 1) * R] = float("nan")   # never read
        b[s, :, :, r:] = float("nan")
    return a.to(device, dtype), b.to(device, dtype)


# (name, M tokens, top_k, E, hidden, moe_inter per TP rank, R, slot ranks)
MOE_CASES = [
    ("qwen3_30b_a3b", 3, 2, 8, 2048, 768, 8, [8, 3, 0]),
    ("dsv3_tp8", 2, 2, 8, 7168, 256, 4, [4, 1, 0]),
    ("odd_m77", 77, 2, 8, 65, 33, 16, [16, 5, 0, 1]),
    ("m1_r64", 1, 2, 8, 96, 48, 64, [64, 0]),
]


def _run_moe(name, M, top_k, E, K, inter, R, ranks, shared=None, drop=False,
             device="cpu", dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n_slots = len(ranks)
    ranks_t = torch.tensor(ranks, dtype=torch.int32, device=device)
    ids, w, slots = _routing(M, top_k, E, n_slots, gen, device, drop)
    plan = moe_lora_plan(ids, slots, ranks_t, E)
    # gate_up: 2 slices, input [M, K], no routed weight
    x = randn(M, K, gen=gen).to(device, dtype)
    a, b = _moe_pool(n_slots, E, 2, R, K, inter, ranks, "a" if shared else None, gen, dtype, device)
    base = randn(M, top_k, 2 * inter, gen=gen).to(device, dtype)
    out, ref = base.clone(), base.clone()
    moe_lora(out, x, a, b, ids, w, slots, ranks_t, n_slices=2, n_experts=E, plan=plan)
    moe_lora_ref(ref, x, a, b, ids, w, slots, ranks_t, n_slices=2, n_experts=E)
    assert_close(out, ref, dtype)
    assert not torch.equal(out, base)
    # down: 1 slice, input [M*top_k, inter], routed weight applied
    xd = randn(M * top_k, inter, gen=gen).to(device, dtype)
    a, b = _moe_pool(n_slots, E, 1, R, inter, K, ranks, "b" if shared else None, gen, dtype, device)
    base = randn(M, top_k, K, gen=gen).to(device, dtype)
    out, ref = base.clone(), base.clone()
    moe_lora(out, xd, a, b, ids, w, slots, ranks_t, n_slices=1, mul_routed_weight=True,
             n_experts=E, plan=plan)
    moe_lora_ref(ref, xd, a, b, ids, w, slots, ranks_t, n_slices=1, mul_routed_weight=True,
                 n_experts=E)
    assert_close(out, ref, dtype)
    # pairs with no adapter or a dropped expert are untouched
    untouched = (slots.long()[:, None] < 0) | (ranks_t.long()[slots.long().clamp(min=0)][:, None] == 0) | (ids < 0)
    assert torch.equal(out[untouched], base[untouched])


@pytest.mark.interp
@pytest.mark.parametrize("shared", [False, True], ids=["per_expert", "shared_outer"])
@pytest.mark.parametrize("case", MOE_CASES, ids=[c[0] for c in MOE_CASES])
def test_moe_vs_ref(case, shared):
    _run_moe(*case, shared=shared)


@pytest.mark.interp
def test_moe_dropped_experts_and_non_gated():
    _run_moe("ep_drop", 13, 2, 8, 64, 32, 8, [8, 2, 0], drop=True)
    gen = torch.Generator().manual_seed(3)
    ranks = torch.tensor([8, 4], dtype=torch.int32)
    ids, w, slots = _routing(9, 2, 8, 2, gen)
    x = randn(9, 40, gen=gen)
    a, b = _moe_pool(2, 8, 1, 8, 40, 24, [8, 4], None, gen, torch.float32, "cpu")
    out = randn(9, 2, 24, gen=gen)
    ref = out.clone()
    moe_lora(out, x, a, b, ids, w, slots, ranks, n_slices=1)       # non-gated w1 only
    moe_lora_ref(ref, x, a, b, ids, w, slots, ranks, n_slices=1)
    assert_close(out, ref)


@pytest.mark.parametrize("make_plan", [
    moe_lora_plan_ref, pytest.param(moe_lora_plan, marks=pytest.mark.interp)], ids=["torch", "triton"])
def test_plan_groups_pairs_by_slot_and_expert(make_plan):
    gen = torch.Generator().manual_seed(4)
    M, top_k, E = 23, 2, 8
    ranks = torch.tensor([4, 0, 2], dtype=torch.int32)
    ids, _, slots = _routing(M, top_k, E, 3, gen, drop=True)
    plan = make_plan(ids, slots, ranks, E, block_m=4)
    P = M * top_k
    seen = []
    for blk in range(plan.block_slot.numel()):
        s, e = int(plan.block_slot[blk]), int(plan.block_expert[blk])
        pairs = [int(p) for p in plan.sorted_pairs[blk * 4:(blk + 1) * 4] if p < P]
        if s < 0:
            assert not pairs
            continue
        assert pairs, "a live block holds at least one pair"
        for p in pairs:
            assert int(slots[p // top_k]) == s and int(ids.view(-1)[p]) == e
        seen += pairs
    want = [p for p in range(P) if int(slots[p // top_k]) >= 0
            and int(ranks[int(slots[p // top_k])]) > 0 and int(ids.view(-1)[p]) >= 0]
    assert sorted(seen) == want


@pytest.mark.parametrize("shared", [False, True])
def test_moe_ref_matches_naive_loop(shared):
    gen = torch.Generator().manual_seed(5)
    M, top_k, E, K, W, R = 6, 2, 4, 7, 5, 3
    ranks = [3, 1, 0]
    rt = torch.tensor(ranks, dtype=torch.int32)
    ids, w, slots = _routing(M, top_k, E, 3, gen, drop=True)
    for n_slices, x_rows, mul in ((2, M, False), (1, M * top_k, True)):
        x = randn(x_rows, K, gen=gen)
        a, b = _moe_pool(3, E, n_slices, R, K, W, ranks,
                         ("a" if n_slices == 2 else "b") if shared else None, gen,
                         torch.float32, "cpu")
        out = torch.zeros(M, top_k, n_slices * W)
        moe_lora_ref(out, x, a, b, ids, w, slots, rt, n_slices=n_slices,
                     mul_routed_weight=mul, n_experts=E)
        want = torch.zeros(M, top_k, n_slices * W, dtype=torch.float64)
        for m in range(M):
            s = int(slots[m])
            for k in range(top_k):
                e = int(ids[m, k])
                if s < 0 or ranks[s] == 0 or e < 0:
                    continue
                r = ranks[s]
                xr = x[m * top_k + k if x_rows == M * top_k else m].double()
                for i in range(n_slices):
                    ai = a[s, 0 if a.shape[1] == 1 else e, i * R:i * R + r].double()
                    bi = b[s, 0 if b.shape[1] == 1 else e, i * W:(i + 1) * W, :r].double()
                    d = bi @ (ai @ xr)
                    want[m, k, i * W:(i + 1) * W] = d * (float(w[m, k]) if mul else 1.0)
        assert_close(out, want.float())
        assert want.abs().sum() > 0


@pytest.mark.gpu
@pytest.mark.parametrize("shared", [False, True], ids=["per_expert", "shared_outer"])
@pytest.mark.parametrize("case", MOE_CASES, ids=[c[0] for c in MOE_CASES])
def test_moe_gpu_bf16(case, shared):
    _run_moe(*case, shared=shared, device="cuda", dtype=torch.bfloat16)
