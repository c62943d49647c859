"""The modules SGLang stacks into one, completed with zeros where an adapter has only some of them.

SGLang's loader stacks LoRA weights of modules the model runs as one (``LoRAAdapter.normalize_*``),
always starting from one member and reading the others, or making zeros of a wrong width:

- q/k/v -> ``qkv_proj``, from q_proj: it reads v_proj (k_proj it makes ``zeros_like(v_proj)``). An
  adapter of q_proj alone, or of q_proj and k_proj, is a KeyError on every load, and k_proj or v_proj
  without q_proj stays unstacked, a name no pool module takes (a 422).
- gate/up -> ``gate_up_proj``, from gate_proj (in a dense MLP, a routed expert, a shared expert): an
  up_proj without its gate_proj stays unstacked (a 422).
- MLA's q_a/kv_a_proj_with_mqa -> ``fused_qkv_a_proj_with_mqa``, from q_a_proj: a missing
  kv_a_proj_with_mqa becomes ``zeros_like(q_a_proj)``, whose B has q_lora_rank rows where the pool
  holds kv_lora_rank + rope, and the pool fill's assert then fails inside the scheduler's forward,
  stopping the server (a real DeepSeek-V3 server); kv_a_proj_with_mqa alone stays unstacked.

A missing member gets zeros of the base's widths, so the stacked module adds exactly the adapter's
deltas; the packed converter does the same for q/k/v (packed/convert.py, ZERO_LIKE and ``kv_out``).
Example (tiny Llama, rank 8, q_proj only): ``...layers.0.self_attn.v_proj.lora_A.weight`` is zeros
[8, 128], its lora_B zeros [64, 8]; SGLang's qkv_proj is then A [24, 128], B [256, 8] with rows
128:256 of B zero. The common q_proj + v_proj adapter is left as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sglang_mint.adapters.base_model import BaseModel
from sglang_mint.adapters.lora_keys import KEY
from sglang_mint.adapters.module_paths import module_path

if TYPE_CHECKING:
    import torch

# (the members one stack holds, those SGLang's loader reads) per attention kind, and for gate/up
QKV = (("q_proj", "k_proj", "v_proj"), ("q_proj", "v_proj"))  # a missing k_proj: zeros_like(v_proj), right
MLA_QKV_A = (("q_a_proj", "kv_a_proj_with_mqa"), ("q_a_proj", "kv_a_proj_with_mqa"))
GATE_UP = (("gate_proj", "up_proj"), ("gate_proj",))  # a missing up_proj: zeros_like(gate_proj), right
MLP_PARENTS = ("mlp", "experts", "shared_expert", "shared_experts")


def complete_stacks(tensors: dict[str, "torch.Tensor"], base: BaseModel) -> dict[str, "torch.Tensor"]:
    """``tensors`` (checked, one rank) with zero lora_A/lora_B for each member SGLang reads that a stack
    lacks where the adapter has another member of it. The same dict comes back when none is missing."""
    attention = MLA_QKV_A if base.mla else QKV
    stacks: dict[str, tuple] = {}  # "...layers.0.self_attn." -> (members, needed, parent)
    found: dict[str, dict[str, dict[str, tuple[str, "torch.Tensor"]]]] = {}  # prefix -> {member: {A/B}}
    for name, t in tensors.items():
        m = KEY.match(name)
        path = module_path(m["module"]) if m else None
        if path is None:
            continue
        if path.parent == "self_attn" and path.module in attention[0]:
            members, needed = attention
        elif path.parent in MLP_PARENTS and path.module in GATE_UP[0]:
            members, needed = GATE_UP
        else:
            continue
        prefix = m["module"][:-len(path.module)]
        stacks[prefix] = (members, needed, path.parent)
        found.setdefault(prefix, {}).setdefault(path.module, {})[m["ab"]] = (name, t)
    missing = {prefix: [leaf for leaf in stacks[prefix][1] if leaf not in have] for prefix, have in found.items()}
    if not any(missing.values()):
        return tensors
    out = dict(tensors)
    for prefix, leaves in missing.items():
        have, pair = next(iter(found[prefix].items()))
        parent = stacks[prefix][2]
        for leaf in leaves:
            for ab, (name, t) in pair.items():
                if parent in MLP_PARENTS:  # gate and up have the same widths: zeros like the partner
                    zeros = t.new_zeros(t.shape)
                else:
                    fin, fout = base.module_shape(parent, leaf)
                    rank = t.shape[0] if ab == "A" else t.shape[1]
                    zeros = t.new_zeros((rank, fin) if ab == "A" else (fout, rank))
                out[prefix + leaf + name[len(prefix) + len(have):]] = zeros
    return out
