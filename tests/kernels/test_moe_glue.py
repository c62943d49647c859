"""The MoE glue (sglang_mint/sglang/mint_moe.py) against SGLang's own MoE LoRA hooks.

Same LoRAInfo, same routed batch: the callbacks SGLang's `build_lora_hooks`
returns (its fused_moe_lora, interpreted) and the ones ours return (our
`moe_lora`, interpreted, and its `_ref`) must add the same deltas to the MoE
intermediates, for per-expert and shared-outer adapters, ranks below the pool
rank, a rank-0 slot. (SGLang's fused_experts disables its TMA layout when hooks
are set, so the down input has exactly M*top_k rows; ours is also given 3
padding rows past them, which it must ignore.)
"""

import types

import pytest
import torch

from kernel_cases import assert_close, randn

pytest.importorskip("sglang")

from sglang.srt.lora import lora_moe_runners  # noqa: E402
from sglang.srt.lora.lora_moe_runners import LoRAInfo  # noqa: E402

from sglang_mint.kernels import dispatch  # noqa: E402
from sglang_mint.sglang import mint_moe  # noqa: E402

M, TOP_K, E, K, INTER, R = 7, 2, 8, 64, 32, 8


def make_info(gen, shared_outer):
    ranks = torch.tensor([8, 0, 4, 2], dtype=torch.int64)   # slot 1: rank 0 (no adapter)
    n = ranks.numel()
    # requests of 3, 1, 2, 1 tokens on slots 0, 1, 2, 3
    seg_indptr = torch.tensor([0, 3, 4, 6, 7], dtype=torch.int32)
    req_to_lora = torch.tensor([0, 1, 2, 3], dtype=torch.int32)
    token_slots = torch.tensor([0, 0, 0, -1, 2, 2, 3], dtype=torch.int32)
    ga = randn(n, 1 if shared_outer else E, 2 * R, K, gen=gen) * 0.3
    gb = randn(n, E, 2 * INTER, R, gen=gen) * 0.3
    da = randn(n, E, R, INTER, gen=gen) * 0.3
    db = randn(n, 1 if shared_outer else E, K, R, gen=gen) * 0.3
    # SGLang's MoE pool holds zeros past each adapter's rank (slices spaced by
    # R) and its fused_moe_lora multiplies all R rows; ours reads only r.
    for s, r in enumerate(ranks.tolist()):
        ga.view(n, -1, 2, R, K)[s, :, :, r:] = 0
        gb[s, :, :, r:] = 0
        da[s, :, r:] = 0
        db[s, :, :, r:] = 0
    return LoRAInfo(
        gate_up_lora_a_weights=ga, gate_up_lora_b_weights=gb,
        down_lora_a_weights=da, down_lora_b_weights=db,
        seg_indptr=seg_indptr, req_to_lora=req_to_lora, lora_ranks=ranks,
        adapter_enabled=(ranks > 0).to(torch.int32), token_lora_mapping=token_slots,
        max_lora_rank=R, num_experts=E, has_active_lora=True,
        experts_shared_outer_loras=shared_outer,
    )


def run_hooks(hooks, hidden, cache1, inter_in, cache3, w, ids):
    cache1, cache3 = cache1.clone(), cache3.clone()
    hooks.after_gate_up(hidden, cache1, w, ids)
    hooks.after_down(inter_in, cache3, w, ids)
    return cache1, cache3


@pytest.mark.parametrize("shared_outer", [False, True])
@pytest.mark.parametrize("path", ["triton", "ref"])
def test_mint_moe_hooks_match_sglang_hooks(monkeypatch, shared_outer, path):
    from sglang.kernels.ops.lora.moe import fused_moe_lora_kernel as fml

    # SGLang's custom op has only a CUDA registration; call its Python body, and
    # take its pure-Python alignment (the CUDA one is not importable on CPU).
    monkeypatch.setattr(fml, "fused_moe_lora", lambda **kw: fml._fused_moe_lora(**kw))
    monkeypatch.setattr(lora_moe_runners, "_is_xpu", True)
    if path == "ref":
        monkeypatch.setattr(dispatch, "INTERPRET", False)

    gen = torch.Generator().manual_seed(3 + shared_outer)
    info = make_info(gen, shared_outer)
    ids = torch.stack([torch.randperm(E, generator=gen)[:TOP_K] for _ in range(M)]).int()
    w = torch.rand(M, TOP_K, generator=gen)
    hidden = randn(M, K, gen=gen)
    cache1 = randn(M, TOP_K, 2 * INTER, gen=gen)
    inter_in = randn(M * TOP_K + 3, INTER, gen=gen)     # 3 padding rows for ours
    cache3 = randn(M, TOP_K, K, gen=gen)

    want = run_hooks(lora_moe_runners.build_lora_hooks(hidden, info, ids),
                     hidden, cache1, inter_in[: M * TOP_K], cache3, w, ids)
    backend = types.SimpleNamespace(moe_kernel_calls=0)  # stands in for the MintLoRABackend that tagged it
    setattr(info, mint_moe.TAG, backend)
    ours = mint_moe._around_build_lora_hooks(lora_moe_runners.build_lora_hooks, hidden, info, ids)
    assert ours.after_gate_up.__module__ == mint_moe.__name__
    got = run_hooks(ours, hidden, cache1, inter_in, cache3, w, ids)
    assert backend.moe_kernel_calls == 2  # gate_up and down each launched our kernel once
    # the hooks changed something, and token 3 (no adapter) kept its values
    assert not torch.allclose(want[0], cache1) and not torch.allclose(want[1], cache3)
    assert torch.equal(got[0][3], cache1[3]) and torch.equal(got[1][3], cache3[3])
    assert_close(got[0], want[0])
    assert_close(got[1], want[1])


def test_only_mint_layers_are_tagged():
    from types import SimpleNamespace

    from sglang_mint.sglang.mint_backend import MintLoRABackend

    gen = torch.Generator().manual_seed(0)
    mint = MintLoRABackend(4, torch.device("cpu"))

    def tagged(backend, interleaved=False, virtual=False):
        info = make_info(gen, False)
        info.lora_use_virtual_experts = virtual
        layer = SimpleNamespace(lora_backend=backend, _uses_interleaved_gate_up=interleaved)
        return getattr(mint_moe._after_get_lora_info(info, layer), mint_moe.TAG, None)

    assert tagged(mint) is mint
    assert tagged(object()) is None                  # another backend keeps SGLang's hooks
    assert tagged(mint, interleaved=True) is None    # GPT-OSS interleaved gate_up: SGLang's
    assert tagged(mint, virtual=True) is None        # virtual experts: SGLang's

    untagged = make_info(gen, False)
    sentinel = object()
    assert mint_moe._around_build_lora_hooks(lambda *a: sentinel, None, untagged, None) is sentinel
