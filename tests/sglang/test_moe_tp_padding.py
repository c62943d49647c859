"""Expert LoRA at TP=2 on CPU, where SGLang pads the expert intermediate size (moe_cpu.py, gap 5).

The tiny Qwen3-MoE has 32 expert channels; at TP=2 SGLang's CPU config pads them
to 64 and gives rank 0 channels 0:32 and rank 1 the 32 zero channels. SGLang's own
slicing (the real ``FusedMoEWithLoRA`` methods) runs behind our padding here, on a
module carrying only the attributes the slicing reads.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from sglang.srt.lora.layers import FusedMoEWithLoRA

from sglang_mint.sglang.moe_cpu import _around_slice_moe_lora_a, _around_slice_moe_lora_b

RANK, CHANNELS, HIDDEN = 8, 32, 64


def experts_module(tp_size: int, channels_per_rank: int, gated: bool = True) -> FusedMoEWithLoRA:
    module = FusedMoEWithLoRA.__new__(FusedMoEWithLoRA)
    torch.nn.Module.__init__(module)
    module.tp_size = tp_size
    module.intermediate_size_per_partition = channels_per_rank
    module.base_layer = SimpleNamespace(moe_runner_config=SimpleNamespace(is_gated=gated))
    module._uses_interleaved_gate_up = False
    return module


def slice_a(module, A, tp_rank):
    return _around_slice_moe_lora_a(FusedMoEWithLoRA.slice_moe_lora_a_weights, module, A, tp_rank, "down_proj_moe")


def slice_b(module, B, tp_rank):
    return _around_slice_moe_lora_b(FusedMoEWithLoRA.slice_moe_lora_b_weights, module, B, tp_rank,
                                    "gate_up_proj_moe")


def test_padded_channels_go_to_rank_1_as_zeros():
    module = experts_module(tp_size=2, channels_per_rank=32)  # 32 channels padded to 64
    down_a = {0: torch.randn(RANK, CHANNELS), 5: torch.randn(RANK, CHANNELS)}
    gate_up_b = {0: torch.randn(2 * CHANNELS, RANK), 5: torch.randn(2 * CHANNELS, RANK)}
    for expert in (0, 5):
        assert torch.equal(slice_a(module, down_a, 0)[expert], down_a[expert])
        assert torch.equal(slice_a(module, down_a, 1)[expert], torch.zeros(RANK, CHANNELS))
        assert torch.equal(slice_b(module, gate_up_b, 0)[expert], gate_up_b[expert])  # gate 0:32, then up 0:32
        assert torch.equal(slice_b(module, gate_up_b, 1)[expert], torch.zeros(2 * CHANNELS, RANK))


def test_stacked_experts_are_padded_per_half():
    module = experts_module(tp_size=2, channels_per_rank=32)
    B = torch.randn(3, 2 * CHANNELS, RANK)  # [experts, gate rows then up rows, rank]
    assert torch.equal(slice_b(module, B, 0), B)
    assert torch.equal(slice_b(module, B, 1), torch.zeros_like(B))


def test_an_unpadded_model_is_sliced_as_sglang_slices_it():
    module = experts_module(tp_size=2, channels_per_rank=16)  # 32 channels, aligned: 16 per rank
    A, B = torch.randn(RANK, CHANNELS), torch.randn(2 * CHANNELS, RANK)
    for tp_rank in (0, 1):
        assert torch.equal(slice_a(module, A, tp_rank), FusedMoEWithLoRA.slice_moe_lora_a_weights(
            module, A, tp_rank, "down_proj_moe"))
        own = slice(16 * tp_rank, 16 * (tp_rank + 1))
        assert torch.equal(slice_b(module, B, tp_rank), torch.cat([B[own], B[CHANNELS:][own]]))


def test_expert_parallel_ranks_take_every_padded_channel():
    module = experts_module(tp_size=1, channels_per_rank=64)  # --tp-size 2 --ep-size 2: experts split, channels not
    A, B = torch.randn(RANK, CHANNELS), torch.randn(2 * CHANNELS, RANK)
    padded_a, padded_b = slice_a(module, A, 0), slice_b(module, B, 0)
    assert padded_a.shape == (RANK, 64) and torch.equal(padded_a[:, :CHANNELS], A) and not padded_a[:, CHANNELS:].any()
    assert padded_b.shape == (128, RANK) and not padded_b[CHANNELS:64].any() and not padded_b[96:].any()
    assert torch.equal(padded_b[:CHANNELS], B[:CHANNELS]) and torch.equal(padded_b[64:96], B[CHANNELS:])


@pytest.mark.parametrize("gated", [True, False])
def test_one_rank_changes_nothing(gated):
    module = experts_module(tp_size=1, channels_per_rank=CHANNELS, gated=gated)
    A, B = torch.randn(RANK, CHANNELS), torch.randn(2 * CHANNELS, RANK)
    assert slice_a(module, A, 0) is A and slice_b(module, B, 0) is B


def test_ungated_experts_pad_their_one_projection():
    module = experts_module(tp_size=2, channels_per_rank=32, gated=False)
    B = torch.randn(CHANNELS, RANK)  # up only (Nemotron-H style)
    assert torch.equal(slice_b(module, B, 0), B)
    assert torch.equal(slice_b(module, B, 1), torch.zeros(CHANNELS, RANK))
