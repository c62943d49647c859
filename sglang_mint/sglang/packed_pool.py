"""Fill SGLang's LoRA pool from a packed adapter with one copy per layer-module tensor.

Hooked (AROUND): ``sglang.srt.lora.mem_pool.LoRAMemoryPool.load_lora_weight_to_buffer``,
the method that puts one adapter into one pool slot (``buffer_id``). It is the
narrowest method that sees a whole layer-module: below it SGLang only has the
closure ``load_lora_weight_tensor`` and ``copy_weight_into_buffer``, which get
one expert slice at a time.

SGLang's own fill copies per layer, per module, per expert and per stacked
slice: a 48-layer, 128-expert adapter with gate_up/down is 48 x 128 x (2 + 1)
A copies plus 48 x 128 x 2 B copies (and one ``w * scaling`` temporary per
expert B). A packed adapter (``adapter.mint_packed`` set by packed_loader)
already holds each layer-module in the pool's form, so each tensor goes in
with ONE ``copy_`` into a strided view of the slot. Example, max_lora_rank 8,
adapter rank R 4, E experts, gate_up (C = 2 slices):

    A  [E, 2*4, in]   -> slot.view(E, 2, 8, in)[:, :, :4, :]   one copy; rows 4:8 of each slice zeroed
    B  [E, out, 4]    -> slot[:, :, :4]                         one copy, then *= scaling in place
    dense A [C*4, in] -> slot[:C*4, :]                          one copy (SGLang packs dense slices at r)
    dense B [out, 4]  -> slot[:, :4]                            one copy

What SGLang zeroes we zero and what it leaves we leave, so the slot ends
bit-identical to SGLang's own fill (tests/sglang/test_packed_pool.py checks
every buffer, with the slot poisoned first). Anything outside the layouts
above goes through SGLang's path untouched: a PEFT adapter, TP/EP/MoE-TP > 1,
shared-expert MoE namespaces, embedding or lm_head LoRA, added tokens, a
weight name SGLang would skip or reject, a layer module whose slice methods
are not the identity-at-TP-1 ones listed below, interleaved gate_up MoE
runners, or any shape that does not fit.
"""

from __future__ import annotations

import logging
import re

logger = logging.getLogger("sglang_mint")

_PER_EXPERT = re.compile(r"experts\.(\d+)\.")
MOE_KEYS = ("gate_up_proj_moe", "down_proj_moe")


def load_lora_weight_to_buffer(original, pool, uid, buffer_id, lora_adapter, lora_modules,
                               lora_embed_tokens_module=None, lora_lm_head_module=None):
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
        by_key = {}
        for name, w in adapter.layers[layer_id].weights.items():
            if "shared_experts." in name or _PER_EXPERT.search(name):
                return None
            try:
                target = get_target_module_name(name, pool.target_modules)
            except ValueError:
                return None  # SGLang warns or (strict) refuses: its path says so
            moe = "experts" in name and w.dim() == 3
            key = target + "_moe" if moe else target
            ab = "A" if "lora_A" in name else "B"
            if key not in pool.A_buffer or (key, ab) in by_key:
                return None
            by_key[(key, ab)] = w
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
        steps = []
        for key in pool.A_buffer:  # SGLang's order: every A, then every B
            if key in active:
                steps.append((key, "A", by_key.get((key, "A")), active[key]))
        for key in pool.B_buffer:
            if key in active:
                steps.append((key, "B", by_key.get((key, "B")), active[key]))
        for key, ab, w, moe in steps:
            if w is None:
                continue
            buf = (pool.A_buffer if ab == "A" else pool.B_buffer)[key][layer_id][0]
            c = get_stacked_multiply(key, pool.base_model)
            if moe:
                want = (buf.shape[0], c * r, buf.shape[2]) if ab == "A" else (buf.shape[0], buf.shape[1], r)
            else:
                want = (c * r, buf.shape[1]) if ab == "A" else (buf.shape[0], r)
            if tuple(w.shape) != want or (ab == "A" and moe and buf.shape[1] != c * pool.max_lora_rank):
                return None
        plan.append([(key, ab, w, moe, get_stacked_multiply(key, pool.base_model)) for key, ab, w, moe in steps])
    object.__setattr__(adapter, "_mint_pool_plan", (pool, plan))
    return plan


def run_plan(pool, plan, buffer_id: int, adapter) -> dict:
    import torch
    from sglang.srt.lora import mem_pool

    copy = mem_pool.copy_weight_into_buffer  # looked up per call: bench/load_bench.py counts through it
    r, max_r, scaling = int(adapter.config.r), pool.max_lora_rank, adapter.scaling
    copies = zeros = 0
    for layer_id, steps in enumerate(plan):
        for key, ab, w, moe, c in steps:
            slot = (pool.A_buffer if ab == "A" else pool.B_buffer)[key][layer_id][buffer_id]
            if moe:
                if w is None:
                    slot.zero_()
                    zeros += 1
                    continue
                E = slot.shape[0]
                if ab == "A":  # slices at max_r spacing, as the MoE kernel reads them
                    dst = slot.view(E, c, max_r, slot.shape[-1])
                    live, rest, src = dst[:, :, :r], dst[:, :, r:], w.view(E, c, r, w.shape[-1])
                else:
                    live, rest, src = slot[..., :r], slot[..., r:], w
                    if scaling != 1.0 and w.dtype != slot.dtype:  # SGLang scales in the adapter's dtype
                        src = w * scaling
                if rest.numel():
                    rest.zero_()
                    zeros += 1
                copies += 1
                if ab == "B" and scaling != 1.0 and w.dtype == slot.dtype:
                    if w.device == slot.device:  # host pool: scale on the way in, one pass
                        torch.mul(w, scaling, out=live)  # SGLang's `w * scaling`, written in place
                    else:
                        copy(live, src)
                        live.mul_(scaling)  # same op and dtype as SGLang's host-side `w * scaling`
                else:
                    copy(live, src)
            else:
                view = slot[: c * r] if ab == "A" else slot[:, :r]
                if w is None:
                    view.zero_()
                    zeros += 1
                else:
                    copy(view, w)
                    copies += 1
                if ab == "B" and mem_pool._SGLANG_EXPERIMENTAL_LORA_OPTI:
                    slot[:, r:].zero_()
                    zeros += 1
    for buffers in (pool.embedding_A_buffer, pool.embedding_B_buffer, pool.lm_head_A_buffer, pool.lm_head_B_buffer):
        for t in buffers.values():  # an adapter without embedding LoRA: SGLang clears these slots
            t[buffer_id].zero_()
            zeros += 1
    return {"copies": copies, "zero_fills": zeros}
