"""The Triton (slot, expert) plan against its torch reference: the same block tables, the same pairs
in each group (their order inside a group is the atomics', kernels/moe_plan.py)."""

import pytest
import torch

from sglang_mint.kernels import moe_lora_plan, moe_lora_plan_ref
from sglang_mint.kernels.moe_plan import GROUPS_PER_STEP, PAIRS_PER_PROGRAM, plan_sizes


def _canonical(plan, n_experts):
    """(block_slot, block_expert, each entry of sorted_pairs keyed by its block's group, sorted)."""
    groups = torch.where(plan.block_slot >= 0, plan.block_slot.long() * n_experts + plan.block_expert, -1)
    per_entry = groups.repeat_interleave(plan.block_m)
    keyed = per_entry * (plan.num_pairs + 1) + plan.sorted_pairs.long()
    return plan.block_slot, plan.block_expert, keyed.sort().values


def _routing(M, top_k, E, ranks, seed, *, same_route=False, past_e=False, dtype=torch.int32):
    gen = torch.Generator().manual_seed(seed)
    if same_route:  # every pair in one group: the most contended atomics
        ids = torch.zeros(M, top_k, dtype=torch.long)
        slots = torch.zeros(M, dtype=torch.int32)
    else:
        ids = torch.stack([torch.randperm(E, generator=gen)[:top_k] for _ in range(M)])
        ids[::5, -1] = -1                                             # dropped (another EP rank)
        slots = torch.randint(-1, len(ranks), (M,), generator=gen).int()
    if past_e:  # expert ids >= E are in no group (not slot + 1's expert 0 or 3)
        ids[1::3, 0] = E
        ids[2::7, -1] = E + 3
    return ids.to(dtype), slots, torch.tensor(ranks, dtype=torch.int32)


# (name, M, top_k, E, slot ranks, block_m, routing options)
CASES = [
    ("one_pair", 1, 1, 1, [4], 16, {"same_route": True}),
    ("small", 23, 2, 8, [4, 0, 2], 4, {}),
    ("odd_m77", 77, 2, 8, [16, 5, 0, 1], 16, {}),
    ("pairs_over_programs", 300, 8, 64, [8, 8, 0, 3], 16, {}),           # P = 2400 > 1024
    ("groups_over_steps", 200, 8, 128, [8] * 9, 16, {}),                 # G = 1152 > 1024
    ("one_group", 3000, 1, 1, [8, 8], 64, {"same_route": True}),
    ("int64_ids", 40, 4, 16, [8, 2], 8, {"dtype": torch.int64}),
    ("no_live_rank", 30, 2, 8, [0, 0], 16, {}),
    ("experts_past_e", 50, 4, 8, [4, 4, 4], 8, {"past_e": True}),
    ("blocks_over_programs", 128, 8, 128, [8] * 8, 16, {}),              # max_blocks 1088 > 1024 >= P
]


@pytest.mark.interp
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_plan_equals_the_torch_plan(case):
    name, M, top_k, E, ranks, block_m, options = case
    ids, slots, ranks_t = _routing(M, top_k, E, ranks, seed=len(name), **options)
    got = moe_lora_plan(ids, slots, ranks_t, E, block_m=block_m)
    want = moe_lora_plan_ref(ids, slots, ranks_t, E, block_m=block_m)
    assert (got.num_pairs, got.top_k, got.block_m) == (want.num_pairs, want.top_k, want.block_m)
    assert got.sorted_pairs.shape == want.sorted_pairs.shape and got.block_slot.shape == want.block_slot.shape
    for g, w in zip(_canonical(got, E), _canonical(want, E)):
        assert torch.equal(g, w)
    live = int((want.block_slot >= 0).sum())
    assert (live > 0) == any(ranks), "the case has live pairs exactly when a slot has a rank"


def test_the_cases_reach_past_one_program_and_one_step():
    P = {c[0]: c[1] * c[2] for c in CASES}
    G = {c[0]: c[3] * len(c[4]) for c in CASES}
    assert P["pairs_over_programs"] > PAIRS_PER_PROGRAM and G["groups_over_steps"] > GROUPS_PER_STEP
    name, M, top_k, E, ranks, block_m, _ = next(c for c in CASES if c[0] == "blocks_over_programs")
    max_blocks = plan_sizes(M * top_k, len(ranks), E, block_m)[1]
    assert max_blocks > PAIRS_PER_PROGRAM * -(-M * top_k // PAIRS_PER_PROGRAM), "blocks need a program of their own"


@pytest.mark.interp
def test_strided_token_slots_and_ranks():
    """Views with a stride (a column of a wider table) plan as their contiguous copies do."""
    ids, slots, ranks = _routing(40, 4, 16, [8, 2, 0], seed=3)
    wide_slots = torch.stack([slots, torch.full_like(slots, 1)], 1).reshape(-1)[::2]
    wide_ranks = torch.stack([ranks, torch.full_like(ranks, 5)], 1).reshape(-1)[::2]
    assert not wide_slots.is_contiguous() and not wide_ranks.is_contiguous()
    got = moe_lora_plan(ids, wide_slots, wide_ranks, 16, block_m=8)
    want = moe_lora_plan_ref(ids, slots, ranks, 16, block_m=8)
    for g, w in zip(_canonical(got, 16), _canonical(want, 16)):
        assert torch.equal(g, w)


@pytest.mark.gpu
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_triton_plan_equals_the_torch_plan_gpu(case):
    name, M, top_k, E, ranks, block_m, options = case
    ids, slots, ranks_t = (t.cuda() for t in _routing(M, top_k, E, ranks, seed=len(name), **options))
    got = moe_lora_plan(ids, slots, ranks_t, E, block_m=block_m)
    want = moe_lora_plan_ref(ids, slots, ranks_t, E, block_m=block_m)
    for g, w in zip(_canonical(got, E), _canonical(want, E)):
        assert torch.equal(g.cpu(), w.cpu())


def test_compare_reports_what_the_triton_plan_saves():
    """bench/gpu/compare.py reads the planned rows of an expert shape as the plan's gain, and leaves
    ours-against-SGLang to the kernel rows (whose plans are built before timing, as SGLang's are)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("bench_gpu_compare",
                                                  Path(__file__).resolve().parents[2] / "bench/gpu/compare.py")
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    shape = {"kind": "kernel", "model": "qwen3_30b_a3b", "layer": "experts_down", "mode": "decode",
             "adapters": 8, "rank": 16, "status": "ok", "check": "ok"}
    rows = [{**shape, "variant": v, "ms": ms, "graph_ms": ms / 2} for v, ms in
            [("ours_moe", 0.02), ("sglang_fused_moe_lora", 0.05), ("ours_moe_planned", 0.03),
             ("ours_moe_torch_plan", 0.12)]]
    table, lines = compare.compare(rows)
    assert table[0]["ours_variant"] == "ours_moe" and table[0]["speedup"] == pytest.approx(2.5)
    assert "moe   decode  with its plan (ms): torch plan / Triton plan geomean 4.00, min 4.00 over 1 shapes" in lines
    assert "moe   decode  with its plan (graph_ms): torch plan / Triton plan geomean 4.00" in "\n".join(lines)
