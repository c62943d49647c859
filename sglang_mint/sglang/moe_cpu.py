"""Make SGLang's MoE-expert LoRA path run on a machine without a CUDA device.

With LoRA on routed experts SGLang runs ``FusedMoEWithLoRA`` through its Triton
MoE runner (under ``TRITON_INTERPRET=1`` on CPU). Five gaps of SGLang 0.5.23's CPU
path stop it; each hook below closes one and acts only on CPU tensors (all are
declared only where ``torch.cuda.is_available()`` is False).
"""

from __future__ import annotations

import torch

from sglang_mint.adapters.expert_padding import pad_down_a, pad_gate_up_b
from sglang_mint.kernels.moe_align import lora_align_sizes, moe_align_block_size_torch


def _device_name_cpu(name, *args, **kwargs):
    """1. ``fused_moe_triton_config.get_device_name`` is None on CPU and the config file name calls
    ``.replace`` on it: ``"cpu"`` (no tuned table has that name, so SGLang takes its defaults)."""
    return "cpu" if name is None else name


def _around_moe_align(original, topk_ids, block_size, num_experts, ignore_invalid_expert=False, **kwargs):
    """2. ``moe_align_block_size`` calls the CUDA-only ``sgl_moe_align_block_size`` (NameError on CPU):
    ``kernels/moe_align.py``, checked against SGLang's Triton reference (tests/kernels/test_moe_align_cpu.py)."""
    if topk_ids.device.type != "cpu" or kwargs.get("return_inactive_prefix_count") or kwargs.get(
            "pad_expert_ids"):
        return original(topk_ids, block_size, num_experts, ignore_invalid_expert, **kwargs)
    return moe_align_block_size_torch(topk_ids, block_size, num_experts, ignore_invalid_expert)


def _around_lora_alignment(original, topk_ids, lora_info, *args, **kwargs):
    """3. ``_compute_lora_alignment`` takes its pure-Python alignment only on XPU (or small batches),
    otherwise the CUDA op ``moe_lora_align_block_size``, never imported on CPU: on CPU, always Python."""
    if topk_ids.device.type != "cpu":
        return original(topk_ids, lora_info, *args, **kwargs)
    return _naive_lora_alignment(topk_ids, lora_info)


def _naive_lora_alignment(topk_ids, lora_info):
    """``_compute_lora_alignment``'s own pure-Python branch (taken on XPU), sizes as SGLang's."""
    from sglang.srt.lora import lora_moe_runners as runners

    block_m = 64  # SGLang's shrink BLOCK_SIZE_M for this path
    max_loras = len(lora_info.lora_ranks)
    padded, m_blocks = lora_align_sizes(topk_ids.numel(), int(lora_info.num_experts), block_m)
    sorted_ids, expert_ids, post_padded = runners._naive_moe_lora_align_block_size(
        topk_ids, lora_info.seg_indptr, lora_info.req_to_lora, int(lora_info.num_experts), block_m,
        max_loras, int(padded), int(m_blocks), lora_info.adapter_enabled, topk_ids.device,
    )
    lora_ids = torch.arange(max_loras, dtype=torch.int32, device=topk_ids.device)
    return sorted_ids.view(max_loras, -1), expert_ids.view(max_loras, -1), post_padded, lora_ids


REGISTER_PARAMS = ("op_name", "op_func", "mutates_args", "fake_impl", "target_lib")  # direct_register_custom_op's


def _also_register_cpu(result, *args, **kwargs):
    """4. ``direct_register_custom_op`` registers an op for the CUDA dispatch key only, so
    ``torch.ops.sglang.fused_moe_lora`` has no CPU kernel: register the same function for CPU too."""
    from sglang.srt.utils import common

    given = {**dict(zip(REGISTER_PARAMS, args)), **kwargs}
    lib = given.get("target_lib") or common.sglang_lib
    try:
        lib.impl(given["op_name"], given["op_func"], "CPU")
    except RuntimeError as exc:
        if "multiple times" not in str(exc):  # already registered (a second engine in-process)
            raise
    return result


# 5. With --tp-size > 1 on CPU SGLang pads moe_intermediate_size up to a multiple of tp_size * 32
# and the base expert weights with zeros, but slices the adapter's expert tensors as if they had
# the padded size: the tiny Qwen3-MoE's 32 becomes 64 at TP=2, rank 0 takes columns 0:32 of
# down_proj's A (all of it) and rank 1 columns 32:64 (none). Pad the adapter's tensors the way the
# base was padded before SGLang slices them (adapters/expert_padding.py); the padded channels stay
# zero. Under expert parallelism the padding is the same and nothing is sliced.
def _around_slice_moe_lora_a(original, module, A, tp_rank, target_module):
    """down_proj's A reads the intermediate: [..., rank, I] -> [..., rank, I_padded]."""
    if target_module == "down_proj_moe":
        A = pad_down_a(A, _padded_intermediate(module))
    return original(module, A, tp_rank, target_module)


def _around_slice_moe_lora_b(original, module, B, tp_rank, target_module):
    """gate_up's B writes gate then up: [..., 2*I, rank] -> [..., 2*I_padded, rank], each half padded."""
    if target_module == "gate_up_proj_moe":
        B = pad_gate_up_b(B, _padded_intermediate(module), module.base_layer.moe_runner_config.is_gated)
    return original(module, B, tp_rank, target_module)


def _padded_intermediate(module) -> int:
    return module.intermediate_size_per_partition * module.tp_size
