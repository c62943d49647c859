"""An attention layer's q_proj and v_proj LoRA completed with zeros, as SGLang's loader needs them.

SGLang stacks q/k/v into one qkv_proj (``LoRAAdapter.normalize_qkv_proj``) starting from the
q_proj weight, and then reads v_proj (k_proj it makes ``zeros_like(v_proj)``): an adapter of
q_proj alone, or of q_proj and k_proj, is a KeyError on every load, and k_proj or v_proj
without q_proj stays unstacked, a name no pool module takes. A missing q_proj or v_proj
here gets zeros of the base's widths (k_proj SGLang fills itself), so the stacked qkv_proj
adds exactly the adapter's deltas; the packed converter does the same (packed/convert.py,
ZERO_LIKE and ``kv_out``). The common q_proj + v_proj adapter is left as it is.

Example (tiny Llama, rank 8, q_proj only): ``...layers.0.self_attn.v_proj.lora_A.weight``
is zeros [8, 128], its lora_B zeros [64, 8]; SGLang's qkv_proj is then A [24, 128],
B [256, 8] with rows 128:256 of B zero.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sglang_mint.adapters.base_model import BaseModel
from sglang_mint.adapters.lora_keys import KEY
from sglang_mint.adapters.module_paths import module_path

if TYPE_CHECKING:
    import torch

QKV = ("q_proj", "k_proj", "v_proj")
NEEDED = ("q_proj", "v_proj")  # what normalize_qkv_proj reads; a missing k_proj it makes zeros_like(v_proj)


def complete_qkv(tensors: dict[str, "torch.Tensor"], base: BaseModel) -> dict[str, "torch.Tensor"]:
    """``tensors`` (checked, one rank) with zero lora_A/lora_B for q_proj or v_proj where an attention layer
    has one of q/k/v but not them. The same dict comes back when none is missing (or the base is MLA, whose
    attention has no k_proj/v_proj)."""
    if base.mla:
        return tensors
    layers: dict[str, dict[str, dict[str, tuple[str, "torch.Tensor"]]]] = {}  # "...self_attn." -> {leaf: {A/B}}
    for name, t in tensors.items():
        m = KEY.match(name)
        path = module_path(m["module"]) if m else None
        if path is None or path.parent != "self_attn" or path.module not in QKV:
            continue
        prefix = m["module"][:-len(path.module)]
        layers.setdefault(prefix, {}).setdefault(path.module, {})[m["ab"]] = (name, t)
    if all(leaf in members for members in layers.values() for leaf in NEEDED):
        return tensors
    out = dict(tensors)
    for prefix, members in layers.items():
        have, pair = next(iter(members.items()))
        for leaf in NEEDED:
            if leaf in members:
                continue
            fin, fout = base.module_shape("self_attn", leaf)
            for ab, (name, t) in pair.items():
                rank = t.shape[0] if ab == "A" else t.shape[1]
                zeros = t.new_zeros((rank, fin) if ab == "A" else (fout, rank))
                out[prefix + leaf + name[len(prefix) + len(have):]] = zeros
    return out
