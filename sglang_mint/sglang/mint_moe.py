"""LoRA on routed MoE experts through sglang-mint's ``moe_lora`` kernel.

SGLang's legacy MoE LoRA path (``FusedMoEWithLoRA`` with the Triton MoE
runner) asks ``sglang.srt.lora.lora_moe_runners.build_lora_hooks`` for two
callbacks, run inside ``fused_experts``:

    after_gate_up(hidden [M, K], cache1 [M, top_k, 2I], topk_w, topk_ids)
    after_down(cache2 [>=M*top_k, I], cache3 [M, top_k, H], topk_w, topk_ids)

Two hooks make those callbacks ours when the layer's LoRA backend is ``mint``:

1. AFTER ``FusedMoEWithLoRA._get_lora_info``: tag the layer's ``LoRAInfo``
   with its backend (only for layouts our kernel covers: not GPT-OSS's
   interleaved gate_up, not SGLang's virtual experts).
2. AROUND ``build_lora_hooks``: for a tagged ``LoRAInfo``, group the routed
   pairs by (slot, expert) once (``moe_lora_plan``; Triton path only, the
   reference needs no plan) and return callbacks that run ``lora_moe`` for
   gate_up (2 slices) and down (1 slice, times the routing weight), both with
   that plan. Any other ``LoRAInfo`` gets SGLang's own hooks.

Example: 3 tokens with slots [0, -1, 2], top-2 routes [[4, 1], [4, 7], [1, 1]]
give the groups (0, e1), (0, e4), (2, e1); token 1 has no adapter and is skipped.
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
