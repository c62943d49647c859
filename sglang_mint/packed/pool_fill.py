"""A packed adapter's layer-module tensors into an engine's LoRA pool slot: one copy per tensor.

SGLang's own fill copies per layer, per module, per expert and per stacked
slice: a 48-layer, 128-expert adapter with gate_up/down is 48 x 128 x (2 + 1)
A copies plus 48 x 128 x 2 B copies (and one ``w * scaling`` temporary per
expert B). A packed adapter already holds each layer-module in the pool's form,
so each tensor goes in with ONE ``copy_`` into a strided view of the slot.
Example, max_lora_rank 8, adapter rank R 4, E experts, gate_up (C = 2 slices):

    A  [E, 2*4, in]   -> slot.view(E, 2, 8, in)[:, :, :4, :]   one copy; rows 4:8 of each slice zeroed
    B  [E, out, 4]    -> slot[:, :, :4]                         one copy, then *= scaling in place
    dense A [C*4, in] -> slot[:C*4, :]                          one copy (SGLang packs dense slices at r)
    dense B [out, 4]  -> slot[:, :4]                            one copy

What SGLang zeroes we zero and what it leaves we leave, so the slot ends
bit-identical to SGLang's own fill (tests/sglang/test_packed_pool.py checks
every buffer, with the slot poisoned first). The glue that decides which
tensors go where is sglang_mint/sglang/packed_pool.py.
"""

from __future__ import annotations

import re
from typing import Callable

import torch

_PER_EXPERT = re.compile(r"experts\.(\d+)\.")


def by_buffer_key(weights: dict, target_of: Callable[[str], str], buffer_keys) -> dict | None:
    """{(pool buffer key, "A" or "B"): tensor} of one layer's packed weights, or None when one
    does not go in whole: a per-expert or shared-expert name, a name no target module matches
    (``target_of`` raises ValueError), a key without a pool buffer, or two tensors for one key.
    Example: "model.layers.0.mlp.experts.gate_up_proj.lora_A.weight" [E, 2r, in] ->
    ("gate_up_proj_moe", "A"); "model.layers.0.self_attn.qkv_proj.lora_B.weight" -> ("qkv_proj", "B").
    """
    by_key = {}
    for name, w in weights.items():
        if "shared_experts." in name or _PER_EXPERT.search(name):
            return None
        try:
            target = target_of(name)
        except ValueError:
            return None  # SGLang warns or (strict) refuses: its path says so
        moe = "experts" in name and w.dim() == 3
        key = target + "_moe" if moe else target
        ab = "A" if "lora_A" in name else "B"
        if key not in buffer_keys or (key, ab) in by_key:
            return None
        by_key[(key, ab)] = w
    return by_key


def layer_steps(a_keys, b_keys, active: dict[str, bool], by_key: dict) -> list[tuple]:
    """SGLang's fill order for one layer, every A then every B of the keys in ``active`` ({key: moe}):
    [(key, "A" or "B", the packed tensor or None, moe)]."""
    return [(key, ab, by_key.get((key, ab)), active[key]) for ab, keys in (("A", a_keys), ("B", b_keys))
            for key in keys if key in active]


def fits(w: torch.Tensor, slot_shape, ab: str, moe: bool, c: int, r: int, max_r: int) -> bool:
    """Whether tensor ``w`` of rank ``r`` goes into a pool slot of ``slot_shape`` by the layouts
    above; ``c`` stacked slices (qkv 3, gate_up 2, else 1), ``max_r`` the pool's rank."""
    if moe:
        want = (slot_shape[0], c * r, slot_shape[2]) if ab == "A" else (slot_shape[0], slot_shape[1], r)
    else:
        want = (c * r, slot_shape[1]) if ab == "A" else (slot_shape[0], r)
    return tuple(w.shape) == want and not (ab == "A" and moe and slot_shape[1] != c * max_r)


def fill_slot(slot: torch.Tensor, w: torch.Tensor | None, ab: str, moe: bool, c: int, r: int, max_r: int,
              scaling: float, copy: Callable, zero_b_tail: bool) -> tuple[int, int]:
    """Write ``w`` (None: the adapter has no such tensor, zeros) into ``slot``; (copies, zero fills).

    ``copy(dst, src)`` is the engine's copy (SGLang's ``copy_weight_into_buffer``);
    ``zero_b_tail`` zeroes a dense B's columns past ``r`` as SGLang does when asked to.
    """
    copies = zeros = 0
    if moe:
        if w is None:
            slot.zero_()
            return 0, 1
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
        return copies, zeros
    view = slot[: c * r] if ab == "A" else slot[:, :r]
    if w is None:
        view.zero_()
        zeros += 1
    else:
        copy(view, w)
        copies += 1
    if ab == "B" and zero_b_tail:
        slot[:, r:].zero_()
        zeros += 1
    return copies, zeros
