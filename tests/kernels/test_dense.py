"""Dense LoRA kernels (shrink, expand, fused) against their torch references."""

import pytest
import torch

from kernel_cases import assert_close, dense_pool, naive_lora_delta, poison, randn
from sglang_mint.kernels import (
    LoraBatch, bgmv_fused, bgmv_fused_ref, sgmv_expand, sgmv_expand_ref, sgmv_shrink,
    sgmv_shrink_ref,
)


def make_batch(kind, T, ranks, gen, device="cpu", every_slot=False):
    """Segments ('seg'), segments + permutation ('perm') or per-token slots ('tok').

    Always includes slot -1 and, for segments, an empty segment.
    """
    n_slots = len(ranks)
    scalings = (torch.rand(n_slots, generator=gen) * 2 + 0.25).tolist()
    if kind == "tok":
        slots = torch.randint(-1, n_slots, (T,), generator=gen)
        if every_slot and T >= n_slots + 1:
            slots[: n_slots + 1] = torch.arange(-1, n_slots)
        else:
            slots[-1] = 0                             # at least one live row
        return LoraBatch.from_token_slots(slots, ranks, scalings, device)
    n_seg = max(1, min(T, n_slots + 1))
    cuts = sorted(torch.randperm(max(T - 1, 1), generator=gen)[: n_seg - 1].add(1).tolist())
    lens = [b - a for a, b in zip([0] + cuts, cuts + [T])]
    slots = list(range(n_slots)) + [-1] if every_slot else torch.randint(
        -1, n_slots, (len(lens),), generator=gen).tolist()
    slots = (slots * len(lens))[: len(lens)]
    lens.insert(len(lens) // 2, 0)                # an empty segment
    slots.insert(len(slots) // 2, 0)
    perm = torch.randperm(T, generator=gen) if kind == "perm" else None
    return LoraBatch.from_segments(lens, slots, ranks, scalings, device, permutation=perm)


# (name, T tokens, K in_dim, R max rank, slice widths, slot ranks)
CASES = [
    # real shapes: hidden / TP
    ("llama8b_qkv_tp4", 3, 4096, 8, [1024, 256, 256], [8, 3, 0, 1]),
    ("llama8b_o_tp8", 5, 512, 16, [4096], [16, 9, 0, 1]),
    ("qwen_gate_up_tp4", 9, 2048, 16, [1536, 1536], [16, 2, 0, 11]),
    ("dsv3_mla_qa_kva", 2, 7168, 4, [1536, 576], [4, 1, 0, 3]),
    ("dsv3_q_b_tp8", 4, 1536, 8, [3072], [8, 5, 0, 1]),
    ("dsa_indexer_wq_b", 2, 1536, 8, [2048], [8, 2, 0, 1]),
    ("dsa_indexer_wk", 3, 7168, 2, [128], [2, 1, 0, 2]),
    ("dsa_indexer_weights_proj", 3, 7168, 2, [64], [1, 2, 0, 2]),
    # odd sizes, rank sweep 1..64
    ("odd_k2049_r1", 77, 2049, 1, [129], [1, 1, 0, 1]),
    ("odd_t199_r64", 199, 129, 64, [77, 33, 33], [64, 17, 0, 1]),
    ("odd_t1_r7", 1, 77, 7, [99, 45], [7, 3, 0, 6]),
    ("rank32_t33", 33, 256, 32, [64, 64, 64], [32, 31, 0, 16]),
]


def _run_dense(name, T, K, R, widths, ranks, kind, packed, device="cpu",
               dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    S = len(widths)
    offs = [0]
    for w in widths:
        offs.append(offs[-1] + w)
    offsets = torch.tensor(offs, dtype=torch.int32, device=device)
    batch = make_batch(kind, T, ranks, gen, device, every_slot=True)
    x = randn(T, K, dtype=dtype, device=device, gen=gen)
    a, b = dense_pool(len(ranks), S, R, K, offs[-1], ranks, packed, dtype, device, gen)

    y = poison(T, S * R, dtype=dtype, device=device)
    y_ref = y.clone()
    sgmv_shrink(x, a, y, batch, S, packed)
    sgmv_shrink_ref(x, a, y_ref, batch, S, packed)
    assert_close(y, y_ref, dtype)

    # expand accumulates into a strided view of a wider base output
    base = randn(T, offs[-1] + 5, dtype=dtype, device=device, gen=gen)
    out, out_ref = base.clone(), base.clone()
    yin = y_ref.clone()
    sgmv_expand(yin, b, out[:, 3: 3 + offs[-1]], batch, offsets, offs, packed)
    sgmv_expand_ref(yin, b, out_ref[:, 3: 3 + offs[-1]], batch, offsets, offs, packed)
    assert_close(out, out_ref, dtype)
    assert not torch.equal(out, base), "no row received a LoRA delta: the case tests nothing"
    assert torch.equal(out[:, :3], base[:, :3]) and torch.equal(out[:, 3 + offs[-1]:], base[:, 3 + offs[-1]:])

    if kind == "tok":
        out2, out2_ref = base.clone(), base.clone()
        bgmv_fused(x, a, b, out2, batch, offsets, offs, S, packed)
        bgmv_fused_ref(x, a, b, out2_ref, batch, offsets, offs, S, packed)
        assert_close(out2, out2_ref, dtype)
    return batch


@pytest.mark.interp
@pytest.mark.parametrize("kind", ["seg", "perm", "tok"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dense_vs_ref(case, kind):
    _run_dense(*case, kind=kind, packed=True)


@pytest.mark.interp
@pytest.mark.parametrize("kind", ["perm", "tok"])
def test_dense_unpacked_slices(kind):
    """Slices spaced by the padded max rank (SGLang's MoE pool layout)."""
    _run_dense("unpacked", 21, 96, 8, [40, 24, 24], [8, 3, 0, 5], kind, packed=False)


@pytest.mark.interp
def test_every_slot_of_a_big_pool():
    """16 pool slots, all in use in one batch, plus rows with no adapter."""
    ranks = [(i % 8) + 1 for i in range(16)]
    _run_dense("pool16", 40, 64, 8, [48, 16], ranks, "seg", packed=True)
    _run_dense("pool16", 40, 64, 8, [48, 16], ranks, "tok", packed=True)


@pytest.mark.interp
def test_empty_batch_and_no_adapter_rows_untouched():
    gen = torch.Generator().manual_seed(1)
    x = randn(6, 32, gen=gen)
    a, b = dense_pool(2, 1, 4, 32, 16, [4, 4])
    offsets = torch.tensor([0, 16], dtype=torch.int32)
    # every row slot -1: nothing is written
    for batch in (LoraBatch.from_segments([6], [-1], [4, 4], [1.0, 1.0]),
                  LoraBatch.from_token_slots([-1] * 6, [4, 4], [1.0, 1.0])):
        y = poison(6, 4)
        sgmv_shrink(x, a, y, batch)
        assert torch.isnan(y).all()
        out = randn(6, 16, gen=gen)
        before = out.clone()
        sgmv_expand(randn(6, 4, gen=gen), b, out, batch, offsets)
        assert torch.equal(out, before)
    # zero tokens, zero segments
    empty = LoraBatch.from_segments([], [], [4, 4], [1.0, 1.0])
    sgmv_shrink(x[:0], a, poison(0, 4), empty)
    sgmv_expand(poison(0, 4), b, poison(0, 16), empty, offsets)


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("kind", ["seg", "perm", "tok"])
def test_refs_match_naive_loop(kind, packed):
    """The references themselves, against a per-row python loop in fp64."""
    gen = torch.Generator().manual_seed(2)
    T, K, R, ranks = 11, 9, 4, [4, 2, 0, 1]
    offs = [0, 5, 8, 11]
    offsets = torch.tensor(offs, dtype=torch.int32)
    batch = make_batch(kind, T, ranks, gen, every_slot=True)
    x = randn(T, K, gen=gen)
    a, b = dense_pool(4, 3, R, K, 11, ranks, packed, gen=gen)
    y = poison(T, 3 * R)
    sgmv_shrink_ref(x, a, y, batch, 3, packed)
    out = torch.zeros(T, 11)
    sgmv_expand_ref(y, b, out, batch, offsets, offs, packed)
    want = naive_lora_delta(x, a, b, batch, offs, packed)
    assert_close(out, want.float())
    assert want.abs().sum() > 0
    # rows without an adapter stay exactly zero / NaN-poisoned
    for t, s in enumerate(__import__("kernel_cases").naive_rows(batch, T)):
        if s < 0 or ranks[s] == 0:
            assert torch.isnan(y[t]).all() and (out[t] == 0).all()
    if kind == "tok":
        out2 = torch.zeros(T, 11)
        bgmv_fused_ref(x, a, b, out2, batch, offsets, offs, 3, packed)
        assert_close(out2, want.float())


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["seg", "perm", "tok"])
@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_dense_gpu_bf16(case, kind):
    _run_dense(*case, kind=kind, packed=True, device="cuda", dtype=torch.bfloat16)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["seg", "tok"])
def test_dense_gpu_decode_big(kind):
    """Benchmark-sized decode: 64 distinct adapters, rank 16, hidden 4096, qkv."""
    _run_dense("decode64", 64, 4096, 16, [4096, 1024, 1024], [16] * 64, kind,
               packed=True, device="cuda", dtype=torch.bfloat16)


@pytest.mark.interp
@pytest.mark.parametrize("kind", ["seg", "perm", "tok"])
@pytest.mark.parametrize("split", [2, 4, 8])
def test_split_k_shrink(kind, split, monkeypatch):
    """K split across programs, summed by the last split to finish: equal to the
    reference, bitwise equal on a rerun, and every tile counter back at 0."""
    from sglang_mint.kernels import _config
    from sglang_mint.kernels._splitk import WORKSPACE

    monkeypatch.setattr(_config, "sm_count", lambda device: 10_000)  # always want the cap
    gen = torch.Generator().manual_seed(split)
    T, K, S, R, ranks = 21, 1000, 3, 8, [8, 5, 0, 8]
    cfg = {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64, "SPLIT_K": split}
    assert _config.split_for(cfg, K, 4, "cpu") == split
    batch = make_batch(kind, T, ranks, gen, every_slot=True)
    x = randn(T, K, gen=gen)
    a, _ = dense_pool(len(ranks), S, R, K, 8, ranks, gen=gen)
    y, y_ref = poison(T, S * R), poison(T, S * R)
    sgmv_shrink(x, a, y, batch, S, config=cfg)
    sgmv_shrink_ref(x, a, y_ref, batch, S)
    assert_close(y, y_ref)
    again = poison(T, S * R)
    sgmv_shrink(x, a, again, batch, S, config=cfg)
    assert torch.equal(torch.nan_to_num(again, 7.0), torch.nan_to_num(y, 7.0))
    assert all(int(counters.abs().sum()) == 0 for _, counters in WORKSPACE._buffers.values())
    unsplit = poison(T, S * R)
    sgmv_shrink(x, a, unsplit, batch, S, config={**cfg, "SPLIT_K": 1})
    assert_close(unsplit, y_ref)


def test_split_for_fills_two_waves_within_its_cap():
    from sglang_mint.kernels._config import split_for

    cfg = {"BLOCK_K": 128, "SPLIT_K": 16}
    assert split_for(cfg, 4096, 1, "cpu") == 8          # 4 "SMs" on CPU: 8 programs wanted
    assert split_for(cfg, 4096, 8, "cpu") == 1          # already two waves
    assert split_for(cfg, 200, 1, "cpu") == 2           # never an empty split: 200 / 128 -> 2
    assert split_for({**cfg, "SPLIT_K": 1}, 4096, 1, "cpu") == 1


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["seg", "tok"])
def test_split_k_gpu_no_race(kind):
    """Real concurrency: 16 splits of K=4096 over 64 slots, 30 launches. A missing
    fence or a counter left non-zero shows as a result that moves between launches."""
    gen = torch.Generator().manual_seed(5)
    T, K, S, R, ranks = 64, 4096, 3, 16, [16] * 64
    cfg = {"BLOCK_M": 64 if kind == "tok" else 16, "BLOCK_N": 64, "BLOCK_K": 128, "SPLIT_K": 16}
    batch = make_batch(kind, T, ranks, gen, "cuda", every_slot=True)
    x = randn(T, K, dtype=torch.bfloat16, device="cuda", gen=gen)
    a, _ = dense_pool(64, S, R, K, 8, ranks, dtype=torch.bfloat16, device="cuda", gen=gen)
    y_ref = poison(T, S * R, dtype=torch.bfloat16, device="cuda")
    sgmv_shrink_ref(x, a, y_ref, batch, S)
    first = None
    for _ in range(30):
        y = poison(T, S * R, dtype=torch.bfloat16, device="cuda")
        sgmv_shrink(x, a, y, batch, S, config=cfg)
        if first is None:
            first = y
            assert_close(y, y_ref, torch.bfloat16)
        assert torch.equal(torch.nan_to_num(y, 7.0), torch.nan_to_num(first, 7.0))


def test_by_slot_sorts_rows_into_one_segment_per_slot():
    batch = LoraBatch.from_token_slots([2, 0, -1, 2, 7], [4, 4, 4], [1.0] * 3)
    seg = batch.by_slot(4)  # the fifth row is past the rows asked for
    assert seg.permutation.tolist() == [2, 1, 0, 3]
    assert seg.seg_indptr.tolist() == [1, 2, 2, 4] and seg.seg_slots.tolist() == [0, 1, 2]
    assert seg.max_seg_len == 4 and batch.by_slot(4) is seg  # planned once per batch
    assert seg.slot_per_row(4).tolist() == batch.slot_per_row(4).tolist()
    assert seg.rows_hint == 2  # 4 rows over 3 slots: block sizes for 2-row segments
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):  # a stable sort by slot, whatever the slots
        slots = torch.randint(-1, 9, (97,), generator=gen)
        seg = LoraBatch.from_token_slots(slots, [4] * 9, [1.0] * 9).by_slot(97)
        assert seg.permutation.tolist() == torch.argsort(slots, stable=True).tolist()


@pytest.mark.gpu
def test_decode_in_a_cuda_graph_follows_new_slots():
    """As SGLang replays decode: by_slot is planned inside the capture, then the
    batch's slot tensor is refilled in place and the graph replayed."""
    gen = torch.Generator().manual_seed(6)
    T, K, R, widths, ranks = 48, 2048, 16, [2048, 512, 512], [16] * 8
    offs = [0, 2048, 2560, 3072]
    offsets = torch.tensor(offs, dtype=torch.int32, device="cuda")
    x = randn(T, K, dtype=torch.bfloat16, device="cuda", gen=gen)
    a, b = dense_pool(8, 3, R, K, offs[-1], ranks, dtype=torch.bfloat16, device="cuda", gen=gen)
    slots = torch.randint(-1, 8, (T,), generator=gen).to(torch.int32).cuda()
    scal = [0.5] * 8
    base = randn(T, offs[-1], dtype=torch.bfloat16, device="cuda", gen=gen)
    out = base.clone()
    y = torch.empty(T, 3 * R, dtype=torch.bfloat16, device="cuda")

    ranks_dev = torch.tensor(ranks, dtype=torch.int32, device="cuda")
    scal_dev = torch.tensor(scal, device="cuda")

    def step():  # a fresh batch each forward, as the backend plans one per forward
        batch = LoraBatch(ranks=ranks_dev, scalings=scal_dev, token_slots=slots)
        sgmv_shrink(x, a, y, batch, 3)
        sgmv_expand(y, b, out, batch, offsets, offs)

    step()  # warm up (compiles, workspace) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    for trial in range(3):
        slots.copy_(torch.randint(-1, 8, (T,), generator=gen).to(torch.int32))
        out.copy_(base)
        graph.replay()
        want = base.float().clone()
        batch = LoraBatch.from_token_slots(slots.cpu(), ranks, scal, "cuda")
        yr = torch.zeros(T, 3 * R, device="cuda")
        sgmv_shrink_ref(x, a, yr, batch, 3)
        sgmv_expand_ref(yr.to(torch.bfloat16), b, want, batch, offsets, offs)
        assert not torch.equal(out, base)
        assert_close(out, want, torch.bfloat16)
