"""A packed header's part map, checked before one source tensor is unpacked from it (format.py: ``parts``).

The part map comes from the file, so from whoever uploaded it, and says how many source tensors
unpacking makes and how big. Unchecked, a 1.7 MiB upload listing 20,000 parts, each the whole of a
stored tensor under a new name, cloned that tensor 20,000 times (2.9 GB), and one part
``{"expert": "each", "experts": 10**15}`` looped for ever. ``checked_parts`` refuses a map unless,
for every stored tensor it names:

* the file stores that tensor, ``slices`` is 1, 2 or 3 (qkv_proj has the most), and there are at most
  ``slices`` parts, or ``slices`` per expert when the parts index experts (never a mix of the two);
* an ``expert`` is below the tensor's leading dimension (and below the base model's expert count
  when the caller knows it); ``"each"`` names at most that many experts and its ``src`` has ``{e}``;
* a box has one ``[start, stop)`` of ints per dimension of what it slices, non-empty, inside it;
* no two parts share an element (no part repeated, no two sources in one region), so the parts
  of a tensor hold at most its elements;
* a ``src`` has at most MAX_SRC_CHARS characters, and the file's sources average at least
  MIN_ELEMENTS_PER_SOURCE stored elements (each source costs ~700 bytes of bookkeeping).

Then unpacking a file makes at most ``3 x leading dimension`` sources per stored tensor, holding at
most the file's data region in all, plus bookkeeping of at most ~22 times it (700 bytes per 16
bf16 elements). Example: qkv_proj A ``[12, 32]`` with q at rows 0:4 and v at 8:12 passes; a third
part at rows 2:6 overlaps q and is refused, naming the tensor and part 2.
"""

from __future__ import annotations

import torch

from sglang_mint.packed.format import PackedError, numel

LAYOUTS = ("plain", "peft_experts_A", "peft_experts_B")
MAX_SLICES = 3  # q/k/v fused into qkv_proj
MAX_SRC_CHARS = 1024  # a PEFT tensor name is ~100: "base_model.model.model.layers.47.mlp.experts.127.up_proj.lora_B.weight"
# Each unpacked source costs ~700 bytes of Python and torch bookkeeping besides its data (measured: 200,000
# one-element clones). Real sources are LoRA matrices, r x a model dimension: the packed test layouts
# average 118 stored elements per source, their smallest is 16 (indexer.weights_proj B, 4 x r=4). A file must
# average at least this many, so [E, 1, 1] tensors unpacked element by element are refused.
MIN_ELEMENTS_PER_SOURCE = 16


def checked_parts(mint: dict, shapes: dict[str, list[int]], where: str,
                  max_experts: int | None = None) -> dict[str, list[dict]]:
    """{stored name: its sources as ``{"src", "expert" (int or None), "box", "layout"}``}, "each"
    parts written out one per expert, after checking the whole map against ``shapes`` ({stored
    name: shape}). ``max_experts``: the base model's expert count (0 for a dense model), None when
    unknown. Raises PackedError naming the tensor and the part."""
    tmap = mint.get("tensors")
    if not isinstance(tmap, dict):
        raise PackedError(f"{where}: the header's part map (mint.tensors) is not a JSON object")
    checked = {}
    for name, info in tmap.items():
        if name not in shapes:
            raise PackedError(f"{where}: part map names {name}, a tensor the file does not store")
        checked[name] = _checked_tensor(info, shapes[name], f"{where}: part map of {name}", max_experts)
    sources = sum(len(experts) for parts in checked.values() for _, _, experts in parts)
    elements = sum(numel(shape) for shape in shapes.values())
    if sources * MIN_ELEMENTS_PER_SOURCE > elements:
        raise PackedError(f"{where}: the part map makes {sources} source tensors out of {elements} stored elements; "
                          f"real LoRA sources average at least {MIN_ELEMENTS_PER_SOURCE} elements each")
    return {name: _expanded(parts, shapes[name], f"{where}: part map of {name}") for name, parts in checked.items()}


def _checked_tensor(info, shape: list[int], where: str, max_experts: int | None) -> list[tuple]:
    """[(part index, part, the experts it stands for)] of one stored tensor, every part checked."""
    if not isinstance(info, dict) or not isinstance(info.get("parts"), list):
        raise PackedError(f'{where}: not {{"slices": C, "parts": [...]}}')
    slices, parts = info.get("slices"), info["parts"]
    if not _is_int(slices) or not 1 <= slices <= MAX_SLICES:
        raise PackedError(f"{where}: slices {slices!r} is not 1, 2 or 3")
    per_expert = bool(parts) and isinstance(parts[0], dict) and parts[0].get("expert") is not None
    if per_expert and not shape:
        raise PackedError(f"{where}: its parts index experts but the tensor is a scalar")
    limit = slices * shape[0] if per_expert else slices
    held = f"its {slices} slices of {shape[0]} experts" if per_expert else f"its {slices} slices"
    if len(parts) > limit:  # before looking at any part: a header may list millions
        raise PackedError(f"{where}: {len(parts)} parts, but {held} hold at most {limit}")
    out, sources = [], 0
    for i, part in enumerate(parts):
        experts = _part_experts(part, i, shape, per_expert, max_experts, where)
        view = shape[1:] if per_expert else shape
        box = part["box"]
        if (not isinstance(box, list) or len(box) != len(view)
                or not all(isinstance(x, list) and len(x) == 2 and _is_int(x[0]) and _is_int(x[1])
                           and 0 <= x[0] < x[1] <= d for x, d in zip(box, view))):
            raise PackedError(f"{where}: part {i} box {box!r} is not inside shape {view} "
                              f"(one non-empty [start, stop) per dimension)")
        if part["layout"] != "plain" and len(view) != 3:
            raise PackedError(f"{where}: part {i} layout {part['layout']} needs a 3D [E, ., .] view, not {view}")
        sources += len(experts)
        if sources > limit:
            raise PackedError(f"{where}: its parts stand for more than {limit} sources, "
                              f"but {held} hold at most {limit}")
        out.append((i, part, experts))
    return out


def _part_experts(part, i: int, shape: list[int], per_expert: bool, max_experts: int | None, where: str):
    """The experts a part stands for: [None] for a whole-tensor part, [e], or range(experts) for "each"."""
    def bad(msg: str) -> PackedError:
        return PackedError(f"{where}: part {i} {msg}")

    if not isinstance(part, dict):
        raise bad("is not a JSON object")
    if not isinstance(part.get("src"), str) or "box" not in part:
        raise bad("lacks a src name or a box")
    if len(part["src"]) > MAX_SRC_CHARS:
        raise bad(f"src is {len(part['src'])} characters; a tensor name has at most {MAX_SRC_CHARS}")
    if part.get("layout") not in LAYOUTS:
        raise bad(f"layout {part.get('layout')!r} is not one of {', '.join(LAYOUTS)}")
    expert = part.get("expert")
    if (expert is not None) != per_expert:
        raise bad(f"{'indexes an expert' if expert is not None else 'is whole-tensor'} but part 0 "
                  f"{'does not' if expert is not None else 'does'}; a part map never mixes the two")
    if expert is None:
        return [None]
    if expert == "each":
        n = part.get("experts")
        if not _is_int(n) or n < 1:
            raise bad(f'has "expert": "each" but experts {n!r} is not a positive int')
        if n > shape[0]:
            raise bad(f"names {n} experts, the tensor holds {shape[0]}")
        if max_experts is not None and n > max_experts:
            raise bad(f"names {n} experts, the base model has {max_experts}")
        if n > 1 and "{e}" not in part["src"]:
            raise bad(f"stands for {n} experts but its src {part['src']!r} has no {{e}}")
        return range(n)
    if not _is_int(expert) or expert < 0:
        raise bad(f'expert {expert!r} is not null, "each" or an expert index')
    if expert >= shape[0]:
        raise bad(f"indexes expert {expert}, the tensor holds {shape[0]}")
    if max_experts is not None and expert >= max_experts:
        raise bad(f"indexes expert {expert}, the base model has {max_experts}")
    return [expert]


def _expanded(parts: list[tuple], shape: list[int], where: str) -> list[dict]:
    """One dict per source, after making sure no element is in two parts: one bool per element of the
    tensor (at most half its bytes), marked part by part. Only reached once the parts are known to
    be few and inside the tensor."""
    out = []
    taken = torch.zeros(shape, dtype=torch.bool) if parts else None
    for i, part, experts in parts:
        for e in experts:
            view = taken[e] if e is not None else taken
            region = view[tuple(slice(*x) for x in part["box"])]
            if region.any():
                raise PackedError(f"{where}: part {i} overlaps an earlier part (its box {part['box']}"
                                  f"{'' if e is None else f' of expert {e}'})")
            region.fill_(True)
            src = part["src"].replace("{e}", str(e)) if part["expert"] == "each" else part["src"]
            out.append({"src": src, "expert": e, "box": part["box"], "layout": part["layout"]})
    return out


def _is_int(x) -> bool:
    return type(x) is int  # JSON true/false are bools, which Python counts as ints
