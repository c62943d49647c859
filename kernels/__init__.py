"""Triton LoRA kernels for sglang-mint (installed as `sglang_mint.kernels`).

One file per op family; each has `_<op>_kernel` (@triton.jit), the launcher
`<op>(...)` and `<op>_ref(...)` (plain torch, fp32 accumulation). This package
never imports sglang. docs/kernels.md maps the ops onto SGLang's LoRA backend
methods.

    sgmv_shrink  / sgmv_shrink_ref   y = x @ A[slot]^T, n_slices in one launch
    sgmv_expand  / sgmv_expand_ref   out[:, slice] += scale * y_i @ B_i[slot]^T
    bgmv_fused   / bgmv_fused_ref    both at once, per-token (decode)
    moe_lora     / moe_lora_ref      routed-expert LoRA grouped by (slot, expert)
    moe_lora_plan / moe_lora_plan_ref   that grouping, once per MoE layer
    lora_shrink, lora_expand, lora_fused, lora_moe   Triton-or-ref dispatch
    layer_ops                        one layer call over a planned LoraBatch (what a LoRA backend runs)
    routes.route_for                 ours or SGLang's Triton kernels per dense shape class
"""

from .batch import LoraBatch
from .dispatch import lora_expand, lora_fused, lora_moe, lora_shrink, use_triton
from .moe_lora import moe_lora, moe_lora_ref
from .moe_plan import MoeLoraPlan, moe_lora_plan, moe_lora_plan_ref
from .sgmv_expand import sgmv_expand, sgmv_expand_ref
from .sgmv_fused import bgmv_fused, bgmv_fused_ref
from .sgmv_shrink import sgmv_shrink, sgmv_shrink_ref

__all__ = [
    "LoraBatch", "MoeLoraPlan",
    "sgmv_shrink", "sgmv_shrink_ref", "sgmv_expand", "sgmv_expand_ref",
    "bgmv_fused", "bgmv_fused_ref", "moe_lora", "moe_lora_plan", "moe_lora_plan_ref", "moe_lora_ref",
    "lora_shrink", "lora_expand", "lora_fused", "lora_moe", "use_triton",
]
