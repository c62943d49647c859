"""Our references against SGLang 0.5.23's own LoRA kernels on the same pool.

This pins the layout contract the mint backend relies on: same A/B pool
tensors, same batch routing, same numbers as csgmv (dense) and
fused_moe_lora (MoE). SGLang's kernels run under the Triton interpreter.
Skips when sglang is not installed (e.g. on the bare GPU machine).
"""

import pytest
import torch

from kernel_cases import assert_close, randn
from sglang_mint.kernels import LoraBatch, moe_lora, moe_lora_ref, sgmv_expand, sgmv_expand_ref, sgmv_shrink_ref

pytestmark = pytest.mark.interp


def test_dense_matches_sglang_csgmv(monkeypatch):
    pytest.importorskip("sglang")
    from sglang.kernels.ops.lora.dense import lora_tuning_config

    # SGLang's config lookup calls get_device_name().replace(): None on CPU.
    monkeypatch.setattr(lora_tuning_config, "get_device_name", lambda *a, **k: "cpu")
    from sglang.kernels.ops.lora.dense.chunked_sgmv_expand import chunked_sgmv_lora_expand_forward
    from sglang.kernels.ops.lora.dense.chunked_sgmv_shrink import chunked_sgmv_lora_shrink_forward
    from sglang.srt.lora.utils import LoRABatchInfo

    gen = torch.Generator().manual_seed(7)
    T, K, R = 40, 64, 8
    ranks, scalings = [8, 4, 0], [0.5, 2.0, 1.0]
    widths = [48, 16, 16]                     # unequal q / k / v
    offs = [0, 48, 64, 80]
    seg_lens, seg_slots = [16, 9, 0, 15], [0, 1, 0, 2]      # chunks <= 16, rank-0 slot
    perm = torch.randperm(T, generator=gen).int()
    x = randn(T, K, gen=gen)
    a = randn(3, 3 * R, K, gen=gen)
    b = randn(3, offs[-1], R, gen=gen)
    ours = LoraBatch.from_segments(seg_lens, seg_slots, ranks, scalings, permutation=perm)
    info = LoRABatchInfo(
        use_cuda_graph=False, bs=len(seg_lens), num_segments=len(seg_lens),
        seg_indptr=ours.seg_indptr, weight_indices=ours.seg_slots,
        lora_ranks=ours.ranks, scalings=ours.scalings, max_len=16,
        seg_lens=torch.tensor(seg_lens, dtype=torch.int32), permutation=perm)
    offsets = torch.tensor(offs, dtype=torch.int32)

    y_sgl = chunked_sgmv_lora_shrink_forward(x=x, weights=a, batch_info=info, num_slices=3)
    y = torch.full_like(y_sgl, float("nan"))
    sgmv_shrink_ref(x, a, y, ours, 3)
    live = ~torch.isnan(y)                    # SGLang leaves the rest as torch.empty
    assert live.any()
    assert_close(y[live], y_sgl[live])

    base = randn(T, offs[-1], gen=gen)
    out_sgl = chunked_sgmv_lora_expand_forward(
        x=y_sgl.contiguous(), weights=b, batch_info=info, slice_offsets=offsets,
        max_slice_size=max(widths), base_output=base.clone())
    y0 = torch.nan_to_num(y_sgl)
    out_ref = sgmv_expand_ref(y0, b, base.clone(), ours, offsets, offs)
    out_ker = sgmv_expand(y0, b, base.clone(), ours, offsets, offs)
    assert_close(out_ref, out_sgl)
    assert_close(out_ker, out_sgl)


def test_moe_matches_sglang_fused_moe_lora():
    pytest.importorskip("sglang")
    from sglang.kernels.ops.lora.moe.fused_moe_lora_kernel import _fused_moe_lora
    from sglang.srt.lora.lora_moe_runners import _naive_moe_lora_align_block_size

    gen = torch.Generator().manual_seed(8)
    M, top_k, E, K, R, inter = 5, 2, 8, 64, 16, 32
    ranks = torch.tensor([16, 16, 0], dtype=torch.int32)
    seg_indptr = torch.tensor([0, 2, 5], dtype=torch.int32)
    req_to_lora = torch.tensor([0, 1], dtype=torch.int32)
    slots = torch.tensor([0, 0, 1, 1, 1], dtype=torch.int32)
    ids = torch.stack([torch.randperm(E, generator=gen)[:top_k] for _ in range(M)]).int()
    w = torch.rand(M, top_k, generator=gen)
    enabled = (ranks > 0).int()
    bm = 64
    padded = ((M * top_k + E * (bm - 1) + bm - 1) // bm) * bm
    st, ex, nt = _naive_moe_lora_align_block_size(
        ids, seg_indptr, req_to_lora, E, bm, 3, padded, padded // bm, enabled,
        torch.device("cpu"))
    lora_ids = torch.arange(3, dtype=torch.int32)
    blocks = (64, 16, 64, 8, 4, 2, 1, 64, 64, 16, 8, 4, 2, 1)

    # gate_up: shared-outer A expanded to all experts, as lora_moe_runners does
    x = randn(M, K, gen=gen) * 0.3
    a = randn(3, 1, 2 * R, K, gen=gen) * 0.3
    b = randn(3, E, 2 * inter, R, gen=gen) * 0.3
    ae = a.expand(-1, E, -1, -1)
    sgl = torch.zeros(M, top_k, 2 * inter)
    _fused_moe_lora(sgl, x, [ae[:, :, :R], ae[:, :, R:]], [b[:, :, :inter], b[:, :, inter:]],
                    w, st.view(3, -1), ex.view(3, -1), nt, R, top_k, lora_ids, enabled, *blocks)
    for fn in (moe_lora_ref, moe_lora):
        out = torch.zeros(M, top_k, 2 * inter)
        fn(out, x, a, b, ids, w, slots, ranks, n_slices=2, n_experts=E)
        assert_close(out, sgl)

    # down: [M*top_k, inter] input, routed weight applied
    xd = randn(M * top_k, inter, gen=gen) * 0.3
    a = randn(3, E, R, inter, gen=gen) * 0.3
    b = randn(3, E, K, R, gen=gen) * 0.3
    sgl = torch.zeros(M, top_k, K)
    _fused_moe_lora(sgl, xd, [a], [b], w, st.view(3, -1), ex.view(3, -1), nt, R, top_k,
                    lora_ids, enabled, *blocks, mul_routed_weight=True)
    for fn in (moe_lora_ref, moe_lora):
        out = torch.zeros(M, top_k, K)
        fn(out, xd, a, b, ids, w, slots, ranks, n_slices=1, mul_routed_weight=True, n_experts=E)
        assert_close(out, sgl)
