"""MintLoRABackend's methods against SGLang's TritonLoRABackend on the same batch.

The shapes the end-to-end Llama test does not reach: MLA's fused q_a + kv_a
(run_qkv_lora, 2 slices of unequal width), a single projection called without
host offsets (ReplicatedLinearWithLoRA: DSA indexer wk / weights_proj, MLA
q_b/kv_b), gate_up, the embedding gather and a pruned lm_head routing. Prefill
segments and the per-token decode form; our Triton kernels (interpreted) and
our `_ref` path; SGLang's kernels interpreted. Then routes: a shape class that
the device's table gives to SGLang's Triton kernels calls the superclass method.
"""

import json
import logging

import pytest
import torch

from kernel_cases import assert_close, randn

pytest.importorskip("sglang")

from sglang.srt.lora.backend.triton_backend import TritonLoRABackend  # noqa: E402
from sglang.srt.lora.utils import LoRABatchInfo  # noqa: E402

from sglang_mint.kernels import _config, dispatch, routes  # noqa: E402
from sglang_mint.sglang.mint_backend import MintLoRABackend, lora_batch_from_info  # noqa: E402

R = 8
RANKS = [8, 0, 4, 2]         # slot 1: rank 0, the "no adapter" slot SGLang uses for base rows
SCALINGS = [0.5, 1.0, 2.0, 1.5]


def info(seg_lens, slots):
    lens = torch.tensor(seg_lens, dtype=torch.int32)
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(lens, 0)
    return LoRABatchInfo(
        use_cuda_graph=False, bs=len(lens), num_segments=len(lens), seg_indptr=indptr,
        weight_indices=torch.tensor(slots, dtype=torch.int32),
        lora_ranks=torch.tensor(RANKS, dtype=torch.int64),
        scalings=torch.tensor(SCALINGS, dtype=torch.float32),
        max_len=max(seg_lens), seg_lens=lens, expected_tokens=sum(seg_lens),
    )


BATCHES = {
    "prefill": info([5, 1, 3, 4], [2, 1, 0, 3]),
    "decode": info([1] * 6, [0, 3, 1, 2, 2, 0]),
}


def pool_a(gen, n_slices, K):
    """Dense A pool: adapter of rank r in rows [:n_slices*r] (SGLang's packed layout)."""
    a = randn(len(RANKS), n_slices * R, K, gen=gen) * 0.3
    for s, r in enumerate(RANKS):
        a[s, n_slices * r:] = 0
    return a


def pool_b(gen, n_out):
    b = randn(len(RANKS), n_out, R, gen=gen) * 0.3
    for s, r in enumerate(RANKS):
        b[s, :, r:] = 0
    return b


@pytest.fixture(params=["triton", "ref"])
def backends(request, monkeypatch):
    if request.param == "ref":
        monkeypatch.setattr(dispatch, "INTERPRET", False)
    return MintLoRABackend(len(RANKS), torch.device("cpu")), \
        TritonLoRABackend(len(RANKS), torch.device("cpu"))


def bind(backends, batch_info):
    for b in backends:
        b.batch_info = batch_info
        b.sgemm_batch_info = None
    backends[0]._planned.clear()


@pytest.mark.parametrize("kind", list(BATCHES))
def test_mla_fused_q_a_kv_a_unequal_slices(backends, kind):
    gen = torch.Generator().manual_seed(1)
    bi = BATCHES[kind]
    bind(backends, bi)
    T, K, q_a, kv_a = bi.expected_tokens, 48, 24, 40     # 1536 / 576 scaled down
    x, a, b = randn(T, K, gen=gen), pool_a(gen, 2, K), pool_b(gen, q_a + kv_a)
    offs = torch.tensor([0, q_a, q_a + kv_a], dtype=torch.int32)
    base = randn(T, q_a + kv_a, gen=gen)
    outs = [be.run_qkv_lora(x=x, qkv_lora_a=a, qkv_lora_b=b, output_offset=offs,
                            output_offset_cpu=offs.clone(), max_qkv_out_dim=kv_a,
                            base_output=base.clone(), n_slices=2) for be in backends]
    assert not torch.allclose(outs[1], base)
    assert_close(outs[0], outs[1])


@pytest.mark.parametrize("kind", list(BATCHES))
def test_single_projection_without_host_offsets(backends, kind):
    """ReplicatedLinearWithLoRA's single path (DSA indexer.wk: hidden -> head_dim)."""
    gen = torch.Generator().manual_seed(2)
    bi = BATCHES[kind]
    bind(backends, bi)
    T, K, N = bi.expected_tokens, 40, 24
    x, a, b = randn(T, K, gen=gen), pool_a(gen, 1, K), pool_b(gen, N)
    offs = torch.tensor([0, N], dtype=torch.int32)
    base = randn(T, N, gen=gen)
    outs = []
    for be in backends:
        y = be.run_lora_a_sgemm(x, a)
        outs.append(be.run_lora_b_sgemm(x=y, weights=b, output_offset=offs,
                                        base_output=base.clone()))
    assert_close(outs[0], outs[1])
    # no base output: a fresh [T, N] delta
    y = backends[0].run_lora_a_sgemm(x, a)
    assert_close(backends[0].run_lora_b_sgemm(x=y, weights=b, output_offset=offs), outs[1] - base)


@pytest.mark.parametrize("kind", list(BATCHES))
def test_gate_up(backends, kind):
    gen = torch.Generator().manual_seed(3)
    bi = BATCHES[kind]
    bind(backends, bi)
    T, K, inter = bi.expected_tokens, 32, 20
    x, a, b = randn(T, K, gen=gen), pool_a(gen, 2, K), pool_b(gen, 2 * inter)
    offs = torch.tensor([0, inter, 2 * inter], dtype=torch.int32)
    base = randn(T, 2 * inter, gen=gen)
    outs = [be.run_gate_up_lora(x=x, gate_up_lora_a=a, gate_up_lora_b=b, output_offset=offs,
                                output_offset_cpu=offs.clone(), base_output=base.clone())
            for be in backends]
    assert_close(outs[0], outs[1])


def test_pruned_lm_head_routing(backends):
    """lm_head gets its own pruned LoRABatchInfo (one row per request here)."""
    gen = torch.Generator().manual_seed(4)
    bind(backends, BATCHES["prefill"])
    pruned = info([1, 1, 1, 1], [2, 1, 0, 3])
    x, a, b = randn(4, 32, gen=gen), pool_a(gen, 1, 32), pool_b(gen, 50)
    offs = torch.tensor([0, 50], dtype=torch.int32)
    base = randn(4, 50, gen=gen)
    outs = []
    for be in backends:
        y = be.run_lora_a_sgemm(x, a, pruned_batch_info=pruned)
        outs.append(be.run_lora_b_sgemm(x=y, weights=b, output_offset=offs, output_offset_cpu=offs,
                                        base_output=base.clone(), pruned_batch_info=pruned))
    assert lora_batch_from_info(pruned).is_bgmv
    assert_close(outs[0], outs[1])


@pytest.mark.parametrize("kind", list(BATCHES))
def test_embedding_gather(backends, kind):
    gen = torch.Generator().manual_seed(5)
    bi = BATCHES[kind]
    bind(backends, bi)
    T, vocab = bi.expected_tokens, 30
    ids = torch.randint(0, vocab, (T,), generator=gen)
    a = randn(len(RANKS), R, vocab, gen=gen)
    outs = [be.run_lora_a_embedding(ids, a, vocab) for be in backends]
    assert_close(outs[0], outs[1])


def test_batch_form_choice():
    assert lora_batch_from_info(BATCHES["decode"]).is_bgmv
    seg = lora_batch_from_info(BATCHES["prefill"])
    assert not seg.is_bgmv and seg.max_seg_len == 5 and seg.num_segments == 4


# ---- routes: a shape class measured faster on SGLang's Triton kernels runs them -------

@pytest.fixture
def route_table(tmp_path, monkeypatch):
    """write({key: choice}): routes__cpu.json in a temp config dir, read fresh."""
    monkeypatch.setattr(_config, "CONFIG_DIR", tmp_path)
    routes.clear_cache()

    def write(table):
        (tmp_path / "routes__cpu.json").write_text(json.dumps(
            {"device": "cpu", "git_commit": "test", "source": "test", "routes": table}))
        routes.clear_cache()

    yield write
    routes.clear_cache()


@pytest.fixture
def spies(monkeypatch):
    """Names of TritonLoRABackend's dense methods as they are called (through super())."""
    called = []
    for name in ("run_lora_a_sgemm", "run_lora_b_sgemm", "run_qkv_lora", "run_gate_up_lora"):
        def spy(self, *a, _real=getattr(TritonLoRABackend, name), _name=name, **k):
            called.append(_name)
            return _real(self, *a, **k)
        monkeypatch.setattr(TritonLoRABackend, name, spy)
    return called


def every_dense_method(be, gen_seed=7):
    """The single projection (a then b), MLA's q_a + kv_a and gate_up on one backend."""
    gen = torch.Generator().manual_seed(gen_seed)
    T = be.batch_info.expected_tokens
    x1, a1, b1 = randn(T, 40, gen=gen), pool_a(gen, 1, 40), pool_b(gen, 24)
    x2, a2, b2 = randn(T, 48, gen=gen), pool_a(gen, 2, 48), pool_b(gen, 64)
    x3, a3, b3 = randn(T, 32, gen=gen), pool_a(gen, 2, 32), pool_b(gen, 40)
    base1, base2, base3 = randn(T, 24, gen=gen), randn(T, 64, gen=gen), randn(T, 40, gen=gen)
    offs1 = torch.tensor([0, 24], dtype=torch.int32)
    offs2 = torch.tensor([0, 24, 64], dtype=torch.int32)
    offs3 = torch.tensor([0, 20, 40], dtype=torch.int32)
    y = be.run_lora_a_sgemm(x1, a1)
    return [
        be.run_lora_b_sgemm(x=y, weights=b1, output_offset=offs1, base_output=base1),
        be.run_qkv_lora(x=x2, qkv_lora_a=a2, qkv_lora_b=b2, output_offset=offs2,
                        output_offset_cpu=offs2.clone(), max_qkv_out_dim=40,
                        base_output=base2, n_slices=2),
        be.run_gate_up_lora(x=x3, gate_up_lora_a=a3, gate_up_lora_b=b3, output_offset=offs3,
                            output_offset_cpu=offs3.clone(), base_output=base3),
    ]


@pytest.mark.parametrize("interpret", [True, False], ids=["triton", "ref"])
@pytest.mark.parametrize("kind", list(BATCHES))
def test_routed_shape_classes_run_sglangs_triton_kernels(route_table, spies, monkeypatch, caplog,
                                                         kind, interpret):
    if not interpret:
        monkeypatch.setattr(dispatch, "INTERPRET", False)
    mode = "decode" if kind == "decode" else "prefill"

    def make():
        be = MintLoRABackend(len(RANKS), torch.device("cpu"))
        be.batch_info, be.sgemm_batch_info = BATCHES[kind], None
        return be

    with caplog.at_level(logging.INFO, logger="sglang_mint"):
        ours = every_dense_method(make())
    assert "mint LoRA kernels: no measured table for cpu: our kernels everywhere" in caplog.text
    assert spies == []

    route_table({routes.route_key(1, 40, R, mode): "sglang_triton",     # o-like: a and b
                 routes.route_key(2, 48, R, mode): "sglang_triton",     # MLA q_a + kv_a
                 routes.route_key(2, 32, R, mode): "sglang_triton"})    # gate_up
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="sglang_mint"):
        be = make()
    assert "mint LoRA kernels: routes from " in caplog.text
    assert "(3 shape classes to SGLang's Triton kernels)" in caplog.text
    routed = every_dense_method(be)
    if interpret:  # Triton runs (interpreted): the table applies
        assert spies == ["run_lora_a_sgemm", "run_lora_b_sgemm", "run_qkv_lora",
                         "run_gate_up_lora"]
    else:  # the torch reference path: no Triton at all, whatever the table says
        assert spies == []
    for got, want in zip(routed, ours):
        assert_close(got, want)


def test_a_route_is_decided_once_per_shape_class(route_table, spies, monkeypatch):
    route_table({routes.route_key(2, 32, R, "prefill"): "sglang_triton"})
    asked = []
    real = routes.route_for
    monkeypatch.setattr(routes, "route_for", lambda *a: asked.append(a) or real(*a))
    be = MintLoRABackend(len(RANKS), torch.device("cpu"))
    be.batch_info, be.sgemm_batch_info = BATCHES["prefill"], None
    for _ in range(2):
        every_dense_method(be)
    assert len(asked) == 3                       # a_sgemm, qkv, gate_up; b follows a
    assert spies == ["run_gate_up_lora"] * 2
    assert be._routes == {("a_sgemm", 1, 40, R, False): False, ("qkv", 2, 48, R, False): False,
                          ("gate_up", 2, 32, R, False): True}


def test_b_after_the_embedding_gather_runs_ours(route_table, spies):
    """b follows the a just before it; after run_lora_a_embedding there is none: ours."""
    route_table({routes.route_key(1, 40, R, "decode"): "sglang_triton"})
    gen = torch.Generator().manual_seed(8)
    be = MintLoRABackend(len(RANKS), torch.device("cpu"))
    be.batch_info, be.sgemm_batch_info = BATCHES["decode"], None
    T = BATCHES["decode"].expected_tokens
    be.run_lora_a_sgemm(randn(T, 40, gen=gen), pool_a(gen, 1, 40))   # routed: b would follow
    y = be.run_lora_a_embedding(torch.randint(0, 30, (T,), generator=gen),
                                randn(len(RANKS), R, 30, gen=gen), 30)
    be.run_lora_b_sgemm(x=y, weights=pool_b(gen, 24), base_output=randn(T, 24, gen=gen))
    assert spies == ["run_lora_a_sgemm"]
