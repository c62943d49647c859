"""Fill SGLang's LoRA pool from a packed adapter with one copy per layer-module tensor (docs/packed.md).

Hooked (AROUND): ``LoRAMemoryPool.load_lora_weight_to_buffer``, the narrowest method
that sees a whole layer-module. A packed adapter (``adapter.mint_packed``, set by
packed_loader) goes in through packed/pool_fill.py, bit-identical to SGLang's fill;
anything ``fill_plan`` does not cover takes SGLang's path untouched.
"""

from __future__ import annotations

import logging

from sglang_mint.packed.pool_fill import by_buffer_key, fill_slot, fits, layer_steps
from sglang_mint.residency.metrics import timed_host_load

logger = logging.getLogger("sglang_mint")

MOE_KEYS = ("gate_up_proj_moe", "down_proj_moe")


def load_lora_weight_to_buffer(original, pool, uid, buffer_id, lora_adapter, lora_modules,
                               lora_embed_tokens_module=None, lora_lm_head_module=None):
    # vllm:lora_adapter_load_seconds{source="host"}, into the metrics residency.py gave the pool
    with timed_host_load(getattr(pool, "_mint_metrics", None) if uid is not None else None):
        plan = None
        if uid is not None and getattr(lora_adapter, "mint_packed", None) is not None:
            plan = fill_plan(pool, lora_adapter, lora_modules)
        if plan is None:
            return original(pool, uid, buffer_id, lora_adapter, lora_modules, lora_embed_tokens_module,
                            lora_lm_head_module)
        stats = run_plan(pool, plan, buffer_id, lora_adapter)
    lora_adapter.mint_packed["pool_fill"] = stats
    logger.info("packed adapter %s into pool slot %d: %d copies, %d zero fills", uid, buffer_id,
                stats["copies"], stats["zero_fills"])
    return None


def _identity_slicers():
    """Layer classes whose slice_lora_{a,b}_weights / slice_moe_lora_{a,b}_weights return the
    same values at TP 1 (a view or a same-valued concat), so skipping them changes nothing."""
    from sglang.srt.lora import layers as L

    dense = {L.ColumnParallelLinearWithLoRA, L.MergedColumnParallelLinearWithLoRA, L.QKVParallelLinearWithLoRA,
             L.RowParallelLinearWithLoRA, L.ReplicatedLinearWithLoRA}
    return ({c.slice_lora_a_weights for c in dense}, {c.slice_lora_b_weights for c in dense},
            L.FusedMoEWithLoRA)


def fill_plan(pool, adapter, lora_modules):
    """Per layer: [(buffer key, "A"/"B", source tensor or None, moe)] for the keys SGLang would
    write on that layer, or None when SGLang's own path must run."""
    cached = getattr(adapter, "_mint_pool_plan", None)
    if cached is not None and cached[0] is pool:
        return cached[1]
    if (pool.tp_size != 1 or pool.attn_tp_size != 1 or pool.moe_tp_size != 1 or pool.moe_ep_size != 1
            or pool.moe_use_local_expert_ids):
        return None
    if adapter.embedding_layers or adapter.added_tokens_embeddings or pool.lora_added_tokens_size:
        return None
    if any(k.endswith("_shared_moe") for k in pool.A_buffer):
        return None
    from sglang.srt.lora.utils import get_stacked_multiply, get_target_module_name

    safe_a, safe_b, fused_moe = _identity_slicers()
    r = int(adapter.config.r)
    plan = []
    for layer_id in range(pool.num_layer):
        by_key = by_buffer_key(adapter.layers[layer_id].weights,
                               lambda name: get_target_module_name(name, pool.target_modules), pool.A_buffer)
        if by_key is None:
            return None
        active: dict[str, bool] = {}
        for module_name, module in lora_modules[layer_id].items():
            if getattr(module, "is_shared_fused_moe", False):
                return None
            if isinstance(module, fused_moe):
                if (type(module).slice_moe_lora_a_weights is not fused_moe.slice_moe_lora_a_weights
                        or type(module).slice_moe_lora_b_weights is not fused_moe.slice_moe_lora_b_weights
                        or module.tp_size > 1 or getattr(module, "_uses_interleaved_gate_up", False)
                        or getattr(module.base_layer, "is_shared_fused_moe", False)):
                    return None
                active.update(dict.fromkeys(MOE_KEYS, True))
                continue
            if type(module).slice_lora_a_weights not in safe_a or type(module).slice_lora_b_weights not in safe_b:
                return None
            active[get_target_module_name(module_name, pool.target_modules)] = False
        steps = layer_steps(pool.A_buffer, pool.B_buffer, active, by_key)
        for key, ab, w, moe in steps:
            slot = (pool.A_buffer if ab == "A" else pool.B_buffer)[key][layer_id][0]
            if w is not None and not fits(w, slot.shape, ab, moe, get_stacked_multiply(key, pool.base_model), r,
                                          pool.max_lora_rank):
                return None
        plan.append([(key, ab, w, moe, get_stacked_multiply(key, pool.base_model)) for key, ab, w, moe in steps])
    object.__setattr__(adapter, "_mint_pool_plan", (pool, plan))
    return plan


def run_plan(pool, plan, buffer_id: int, adapter) -> dict:
    from sglang.srt.lora import mem_pool

    copy = mem_pool.copy_weight_into_buffer  # looked up per call: bench/load_bench.py counts through it
    r, max_r, scaling = int(adapter.config.r), pool.max_lora_rank, adapter.scaling
    copies = zeros = 0
    for layer_id, steps in enumerate(plan):
        for key, ab, w, moe, c in steps:
            slot = (pool.A_buffer if ab == "A" else pool.B_buffer)[key][layer_id][buffer_id]
            n_copies, n_zeros = fill_slot(slot, w, ab, moe, c, r, max_r, scaling, copy,
                                          zero_b_tail=mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI)
            copies, zeros = copies + n_copies, zeros + n_zeros
    for buffers in (pool.embedding_A_buffer, pool.embedding_B_buffer, pool.lm_head_A_buffer, pool.lm_head_B_buffer):
        for t in buffers.values():  # an adapter without embedding LoRA: SGLang clears these slots
            t[buffer_id].zero_()
            zeros += 1
    return {"copies": copies, "zero_fills": zeros}
