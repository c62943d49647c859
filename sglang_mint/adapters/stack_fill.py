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
deltas: those of a same-width partner the adapter has (SAME_WIDTH), else ``BaseModel.module_shape``.
The packed converter stores every stack whole from the same tables (STACKS, SAME_WIDTH), taking the
attention widths it cannot see from the packed identity (``attention_outs``, BaseModel.packed_identity).
Example (tiny Llama, rank 8, q_proj only): ``...layers.0.self_attn.v_proj.lora_A.weight`` is zeros
[8, 128], its lora_B zeros [64, 8]; SGLang's qkv_proj is then A [24, 128], B [256, 8] with rows
128:256 of B zero. The common q_proj + v_proj adapter is left as it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sglang_mint.adapters.lora_keys import KEY
from sglang_mint.adapters.module_paths import EXPERT_ALIASES, MLP_PARENTS, module_path

if TYPE_CHECKING:
    import torch

    from sglang_mint.adapters.base_model import BaseModel

# stacked module -> its members in slice order, as SGLang's normalize_* concatenates them
STACKS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj"),
          "fused_qkv_a_proj_with_mqa": ("q_a_proj", "kv_a_proj_with_mqa")}
# the members SGLang's loader reads once a stack has any member: a missing k_proj it makes
# zeros_like(v_proj), a missing up_proj zeros_like(gate_proj), both right
READ = {"qkv_proj": ("q_proj", "v_proj"), "gate_up_proj": ("gate_proj",),
        "fused_qkv_a_proj_with_mqa": STACKS["fused_qkv_a_proj_with_mqa"]}
# members whose (in, out) are always their partner's: k/v (kv heads x head_dim), gate/up (hidden -> width)
SAME_WIDTH = {"k_proj": "v_proj", "v_proj": "k_proj", "gate_proj": "up_proj", "up_proj": "gate_proj"}


def attention_stack(base: "BaseModel") -> str:
    """The stack of the base's attention: MLA's fused_qkv_a_proj_with_mqa, else qkv_proj."""
    return "fused_qkv_a_proj_with_mqa" if base.mla else "qkv_proj"


def attention_outs(base: "BaseModel") -> dict[str, int]:
    """The output width of each member of the base's attention stack whose width it knows, for a
    converter that fills one an adapter lacks without the BaseModel at hand. Tiny Llama:
    ``{"q_proj": 128, "k_proj": 64, "v_proj": 64}``; tiny DeepSeek-V3 (q_lora_rank 48,
    kv_lora_rank 256, rope 32): ``{"q_a_proj": 48, "kv_a_proj_with_mqa": 288}``."""
    shapes = {m: base.module_shape("self_attn", m) for m in STACKS[attention_stack(base)]}
    return {m: shape[1] for m, shape in shapes.items() if shape}


def _stack_of(parent: str, leaf: str, base: "BaseModel") -> str | None:
    """The stack SGLang puts module ``leaf`` under ``parent`` (module_paths.py's) in, or None."""
    if parent == "self_attn":
        stack = attention_stack(base)
    elif parent in MLP_PARENTS:
        stack = "gate_up_proj"
    else:
        return None
    return stack if leaf in STACKS[stack] else None


def complete_stacks(tensors: dict[str, "torch.Tensor"], base: "BaseModel") -> dict[str, "torch.Tensor"]:
    """``tensors`` (checked, one rank) with zero lora_A/lora_B for each member SGLang reads that a stack
    lacks where the adapter has another member of it. The same dict comes back when none is missing."""
    stacks: dict[str, tuple[str, str]] = {}  # "...layers.0.self_attn." -> (stack, parent)
    found: dict[str, dict[str, dict[str, tuple[str, "torch.Tensor"]]]] = {}  # prefix -> {member: {A/B}}
    mixtral: set[str] = set()  # prefixes whose experts are named w1/w3 (SGLang renames them, then stacks)
    for name, t in tensors.items():
        m = KEY.match(name)
        path = module_path(m["module"]) if m else None
        leaf = path and (EXPERT_ALIASES.get(path.module, path.module) if path.parent == "experts" else path.module)
        stack = _stack_of(path.parent, leaf, base) if path else None
        if stack is None:
            continue
        prefix = m["module"][:-len(path.module)]
        if leaf != path.module:
            mixtral.add(prefix)
        stacks[prefix] = (stack, path.parent)
        found.setdefault(prefix, {}).setdefault(leaf, {})[m["ab"]] = (name, t)
    missing = {prefix: [leaf for leaf in READ[stacks[prefix][0]] if leaf not in have] for prefix, have in found.items()}
    if not any(missing.values()):
        return tensors
    out = dict(tensors)
    named = {v: k for k, v in EXPERT_ALIASES.items()}  # gate_proj -> w1, for a Mixtral adapter's own names
    for prefix, leaves in missing.items():
        pair = next(iter(found[prefix].values()))
        parent = stacks[prefix][1]
        for leaf in leaves:
            partner = found[prefix].get(SAME_WIDTH.get(leaf))
            for ab, (name, t) in pair.items():
                if partner:  # zeros like the partner (3D for routed experts)
                    zeros = t.new_zeros(partner[ab][1].shape)
                else:
                    fin, fout = base.module_shape(parent, leaf)
                    rank = t.shape[0] if ab == "A" else t.shape[1]
                    zeros = t.new_zeros((rank, fin) if ab == "A" else (fout, rank))
                suffix = name[len(KEY.match(name)["module"]):]  # ".lora_A.weight" (or ".lora_A.default.weight")
                out[f"{prefix}{named[leaf] if prefix in mixtral else leaf}{suffix}"] = zeros
    return out
