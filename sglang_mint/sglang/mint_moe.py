"""LoRA on routed MoE experts through sglang-mint's ``moe_lora`` kernel (docs/kernels.md's table).

SGLang's MoE LoRA path asks ``lora_moe_runners.build_lora_hooks`` for the two
callbacks ``fused_experts`` runs (``after_gate_up``, ``after_down``). AFTER
``FusedMoEWithLoRA._get_lora_info`` tags a layer's ``LoRAInfo`` with a ``mint``
backend (not GPT-OSS's interleaved gate_up, not virtual experts); AROUND
``build_lora_hooks`` gives a tagged one callbacks that run ``lora_moe`` over one
(slot, expert) plan (``moe_lora_plan``) and any other SGLang's own.
"""

from __future__ import annotations

TAG = "mint_backend"


def _after_get_lora_info(lora_info, layer, *args, **kwargs):
    from sglang_mint.sglang.mint_backend import MintLoRABackend

    backend = layer.lora_backend
    if (isinstance(backend, MintLoRABackend) and not layer._uses_interleaved_gate_up
            and not lora_info.lora_use_virtual_experts):
        setattr(lora_info, TAG, backend)
    return lora_info


def moe_layer_of(manager):
    """One ``FusedMoEWithLoRA`` layer of the LoRA ``manager``'s model, for verify_internals; None without one."""
    from sglang.srt.lora.layers import FusedMoEWithLoRA

    modules = [m for layer in getattr(manager, "lora_modules", None) or [] for m in layer.values()]
    return next((m for m in modules if isinstance(m, FusedMoEWithLoRA)), None)


def _around_build_lora_hooks(original, hidden_states, lora_info, topk_ids, *args, **kwargs):
    if getattr(lora_info, TAG, None) is None:
        return original(hidden_states, lora_info, topk_ids, *args, **kwargs)
    return build_mint_moe_hooks(lora_info, topk_ids)


def build_mint_moe_hooks(lora_info, topk_ids):
    """LoRAHooks whose callbacks run ``sglang_mint.kernels.lora_moe``."""
    from sglang.srt.lora.lora_moe_runners import LoRAHooks
    from sglang.srt.model_executor.runner import get_is_capture_mode

    from sglang_mint.kernels import moe_lora_plan
    from sglang_mint.kernels.dispatch import lora_moe, use_triton

    R = lora_info.max_lora_rank
    if R == 0:
        return LoRAHooks()
    # As SGLang: skip batches without an adapter, except while capturing a
    # graph (the kernels must be recorded; they early-exit on rank-0 slots).
    if not get_is_capture_mode() and not lora_info.has_active_lora:
        return LoRAHooks()

    backend = getattr(lora_info, TAG)
    E = int(lora_info.num_experts)
    M = topk_ids.shape[0]
    token_slots = lora_info.token_lora_mapping[:M]
    ranks = lora_info.lora_ranks
    plan = (moe_lora_plan(topk_ids, token_slots, ranks, E)
            if use_triton(topk_ids) else None)

    def after_gate_up(hidden, cache1, topk_weights, ids):
        a, b = lora_info.gate_up_lora_a_weights, lora_info.gate_up_lora_b_weights
        backend.moe_kernel_calls += 1
        lora_moe(cache1, hidden, a, b, ids, topk_weights, token_slots, ranks,
                 n_slices=a.shape[2] // R, n_experts=E, plan=plan)

    def after_down(inter, cache3, topk_weights, ids):
        # Rows past M*top_k (SGLang's TMA layout, which it turns off while
        # hooks are set) are never LoRA inputs.
        inter = inter[: ids.numel()]
        backend.moe_kernel_calls += 1
        lora_moe(cache3, inter, lora_info.down_lora_a_weights, lora_info.down_lora_b_weights,
                 ids, topk_weights, token_slots, ranks, n_slices=1,
                 mul_routed_weight=True, n_experts=E, plan=plan)

    return LoRAHooks(after_gate_up=after_gate_up, after_down=after_down)
