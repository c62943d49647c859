"""Which module of the base model a LoRA tensor's module path names.

SGLang files a LoRA weight by the first ``layers.<n>.`` in its name (the layer)
and by substring (``"o_proj" in name``, the module), so any path that mentions a
module lands in that module's buffer. ``layers.0.foo.o_proj`` is filed as layer
0's o_proj; with a width the base does not have ([8, 999] for an o_proj of
128 -> 128) an assert fails inside the scheduler's forward and the whole server
goes down. So a LoRA module is accepted only when its path is one of the module
families below, whose in/out widths ``BaseModel.module_shape`` knows, and those
widths are then checked (adapters/peft.py). In an MoE model each layer has
either the dense MLP or the experts (``BaseModel.routes_to_experts``): a path
to the one its layer lacks is refused too (``absent_from_layer``).

What follows the first ``layers.<n>.`` (``<moe>`` is ``mlp`` or Mixtral's
``block_sparse_moe``, ``<e>`` an expert index):

    self_attn.<m>                 dense attention (q/k/v/o_proj, Phi-3 qkv_proj) or MLA
    self_attn.indexer.<m>         DeepSeek-V3.2's DSA indexer (wq_b, wk, weights_proj)
    mlp.<m>                       dense MLP (gate/up/down_proj, gate_up_proj)
    <moe>.experts.<e>.<m>         one routed expert ([r, in] / [out, r])
    <moe>.experts.<m>             every routed expert ([E, r, in] / [E, out, r], PEFT fused experts)
    mlp.shared_expert(s).<m>      Qwen2-MoE's shared expert, DeepSeek's shared experts

and ``lm_head`` outside the layers (hidden -> vocab). Example:
``base_model.model.model.layers.3.mlp.experts.7.gate_proj`` is layer 3, parent
``experts``, expert 7, module ``gate_proj``; ``...layers.3.foo.o_proj`` is None.
"""

from __future__ import annotations

import re
from typing import NamedTuple

# Mixtral's expert names -> the Llama ones (SGLang's loader renames them so before it stacks gate/up)
EXPERT_ALIASES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}

# The first layers.<n>. of a path, as SGLang's get_layer_id finds it (re.search(r"layers\.(\d+)\.", name)).
_LAYER = re.compile(r"(?:^|\.)layers\.([0-9]+)\.")
# The path between layers.<n>. and the module (expert index dropped) -> module_shape's parent
FAMILIES = {
    ("self_attn",): "self_attn",
    ("self_attn", "indexer"): "indexer",
    ("mlp",): "mlp",
    ("mlp", "experts"): "experts",
    ("block_sparse_moe", "experts"): "experts",
    ("mlp", "shared_expert"): "shared_expert",
    ("mlp", "shared_experts"): "shared_experts",
}
FAMILY_HELP = ("layers.<n>.self_attn.<m>, layers.<n>.self_attn.indexer.<m>, layers.<n>.mlp.<m>, "
               "layers.<n>.mlp.experts[.<e>].<m>, layers.<n>.mlp.shared_expert(s).<m>, or lm_head")


class ModulePath(NamedTuple):
    layer: int | None  # None for lm_head
    parent: str  # module_shape's parent: self_attn, indexer, mlp, experts, shared_expert(s); "" for lm_head
    module: str  # the module's own name: q_proj, w1, lm_head, ...
    expert: int | None  # the routed expert of a per-expert path, else None


def module_path(path: str) -> ModulePath | None:
    """The base-model module ``path`` names (see the module doc), or None when it names none of them."""
    found = _LAYER.search(path)
    if found is None:
        return ModulePath(None, "", "lm_head", None) if path.rsplit(".", 1)[-1] == "lm_head" else None
    parts = path[found.end():].split(".")
    expert = None
    if len(parts) >= 3 and parts[-3] == "experts" and parts[-2].isascii() and parts[-2].isdigit():
        expert = int(parts[-2])
        parts = parts[:-2] + parts[-1:]
    parent = FAMILIES.get(tuple(parts[:-1]))
    if parent is None or not parts[-1]:
        return None
    return ModulePath(int(found[1]), parent, parts[-1], expert)


# MLA without q compression (q_lora_rank null: DeepSeek-V2-Lite) has these two, and SGLang 0.5.23
# serves a LoRA on neither: it stacks every q_proj with k_proj and v_proj (KeyError on v_proj as the
# adapter loads), and files kv_a_proj_with_mqa under fused_qkv_a_proj_with_mqa, a module such a
# model lacks (ValueError in the scheduler's forward, which stops the server for every tenant).
_MLA_WITHOUT_Q_LORA = ("q_proj", "kv_a_proj_with_mqa")


def unservable(path: ModulePath, base) -> str | None:
    """Why SGLang cannot serve a LoRA on the base model's module at ``path``, though the module
    exists; None when it can. ``base`` is the catalog's BaseModel."""
    if path.parent == "self_attn" and base.mla and not base.q_lora_rank and path.module in _MLA_WITHOUT_Q_LORA:
        return (f"SGLang serves no LoRA on {path.module} of an MLA model without q compression (q_lora_rank "
                f"null, as DeepSeek-V2-Lite): it stacks q_proj with k_proj and v_proj, and expects "
                f"kv_a_proj_with_mqa fused with a q_a_proj this model lacks; leave q_proj and "
                f"kv_a_proj_with_mqa out of target_modules (kv_b_proj, o_proj and the MLP are served)")
    return None


MLP_PARENTS = ("mlp", "experts", "shared_expert", "shared_experts")  # the parents of an MLP module


def absent_from_layer(path: ModulePath, base) -> str | None:
    """Why the MLP module at ``path`` is not on its layer, though the model has it on others: a dense
    ``mlp.<m>`` on a layer that routes to experts, an expert's or shared expert's on a dense layer; None
    when it is there or the record does not say (``base.moe_layers`` unrecorded). HF+PEFT cannot make such
    a LoRA, and SGLang files it by name: ``layers.1.mlp.gate_proj`` on an expert layer as layer 1's
    gate_up_proj (a no-op on Qwen3-MoE; on DeepSeek-V3 it moved the output, likely through the shared
    experts), a routed expert's on a dense layer into an expert buffer no module of that layer reads."""
    if path.layer is None or path.parent not in MLP_PARENTS:
        return None
    sparse = base.routes_to_experts(path.layer)
    if sparse is None or sparse == (path.parent != "mlp"):
        return None
    if sparse:
        shared = " and shared experts mlp.shared_expert(s).<m>" if base.shared_expert_intermediate_size else ""
        what = (f"routes to experts and has no dense mlp.{path.module} (its MLP is routed experts "
                f"mlp.experts[.<e>].<m>{shared})")
    else:
        what = ("has a dense MLP (mlp.gate_proj, mlp.up_proj, mlp.down_proj) and no "
                f"{'experts' if path.parent == 'experts' else 'shared expert'}")
    return (f"layer {path.layer} of base model {base.name!r} {what}; refused, as no HF+PEFT "
            f"adapter has this module and SGLang would put it in another module of the layer or drop it")
