"""PEFT folder -> packed tensors (the fused form of format.py), and back.

Accepted MoE expert layouts (all become 3D ``experts.<proj>`` tensors):

* per expert: ``...mlp.experts.7.gate_proj.lora_A.weight`` [r, in] (also w1/w3/w2);
* 3D packed: ``...mlp.experts.gate_proj.lora_A.weight`` [E, r, in], B [E, out, r],
  shared-outer [1, r, in];
* PEFT 0.21 fused experts (transformers 5 MoE parameters, ``target_parameters``):
  ``...mlp.experts.base_layer.lora_A.weight`` [E*R, in] and ``...lora_B.weight``
  [out, R*E] for the first target parameter, ``...experts.lora_A.weight`` for
  the last (PEFT nests one ParamWrapper per parameter; with
  target_parameters ['gate_up_proj', 'down_proj'] the inner ``base_layer`` is
  gate_up_proj). PEFT's own reshape: A3 = A.reshape(E, R, in), B3 =
  B.reshape(out, R, E).permute(2, 0, 1). A fused gate_up_proj has ONE A for
  both halves, so it fills both A slices (gate and up) and B goes whole.

Stacks (adapters/stack_fill.py): q/k/v, gate/up and MLA's q_a/kv_a are stored stacked, as
SGLang's pool holds them, whichever members the adapter has; a member it lacks is zeros of its
width: a same-width partner's (k/v, gate/up), else the base's (``stack_outs`` of the packed
identity). Example (tiny Llama, k_proj only, rank 4): qkv_proj A [12, 128] with rows 4:8 the
k_proj A, B [128 + 64 + 64, 4] with rows 128:192 its B, the rest zeros that no part names.

Ranks and scalings: modules of different ranks are zero-padded to the
largest, R. If every module has one scaling s (alpha_m / r_m, or
alpha_m / sqrt(r_m) under use_rslora), the packed config says r = R and
lora_alpha = s * R and the source tensors are stored unchanged (unpack is
bit-exact). If scalings differ (rank_pattern / alpha_pattern), the adapter is
first rewritten by ``sglang_mint.adapters.uniform_rank.uniform_lora`` (B pre-scaled,
r = lora_alpha = R) and that uniform form is what is stored and unpacked.
"""

from __future__ import annotations

import json
import os
import re

import torch

from sglang_mint.adapters.base_model import read_base_model
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.folder_form import peft_weight_files
from sglang_mint.adapters.lora_keys import PEFT_FUSED, ModuleRanks, fused_expert_params, scaling
from sglang_mint.adapters.module_paths import EXPERT_ALIASES, module_path
from sglang_mint.adapters.stack_fill import SAME_WIDTH, STACKS
from sglang_mint.adapters.uniform_rank import uniform_lora
from sglang_mint.packed.format import PackedError
from sglang_mint.packed.part_map import checked_parts
from sglang_mint.packed.writer import DTYPE_NAMES

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"

# member -> (fused name, slice index, slices): "k_proj" -> ("qkv_proj", 1, 3)
FUSE = {m: (stack, i, len(members)) for stack, members in STACKS.items() for i, m in enumerate(members)}
# names an adapter may hold already stacked (Phi-3), whose one A SGLang's loader repeats per slice
PRESTACKED = ("qkv_proj", "gate_up_proj")
_KEY = re.compile(r"^(?P<mod>.+)\.lora_(?P<ab>[AB])\.weight$")
_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<proj>[A-Za-z0-9_]+)$")
_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


class Member:
    """One source module (A and B) and where it goes in a stored module."""

    def __init__(self, stored: str, slot: int, slices: int, expert: int | None, layout: str, rank: int):
        self.stored, self.slot, self.slices, self.expert, self.layout, self.rank = stored, slot, slices, expert, layout, rank
        self.src: dict[str, str] = {}          # "A"/"B" -> source key
        self.t: dict[str, torch.Tensor] = {}    # "A"/"B" -> tensor (3D for experts after reshape)


def read_peft(folder: str) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg_path, w_path = os.path.join(folder, CONFIG), os.path.join(folder, WEIGHTS)
    if not os.path.isfile(cfg_path) or not os.path.isfile(w_path):
        raise PackedError(f"{folder}: not a PEFT folder (needs {CONFIG} and {WEIGHTS})")
    with open(cfg_path, "rb") as f:
        cfg_bytes = f.read()
    with open(w_path, "rb") as f:
        weights = f.read()
    return parse_peft(cfg_bytes, weights, folder)


def parse_peft(cfg_bytes: bytes, weights: bytes, where: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(adapter_config, tensors) from the two files of a PEFT folder, already in memory."""
    from safetensors.torch import load

    try:
        cfg = json.loads(cfg_bytes)
    except ValueError as exc:
        raise PackedError(f"{where}/{CONFIG}: not JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise PackedError(f"{where}/{CONFIG}: not a JSON object")
    if str(cfg.get("peft_type", "")).upper() != "LORA":
        raise PackedError(f"{where}/{CONFIG}: peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        raise PackedError(f"{where}/{CONFIG}: DoRA adapters are not supported")
    try:
        tensors = load(bytes(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise PackedError(f"{where}/{WEIGHTS}: unreadable safetensors ({exc})") from None
    # safetensors returns its dict in hash order, which varies between runs; sorted names make the
    # packed bytes a function of the input (the catalog stores them content-addressed)
    return cfg, dict(sorted(tensors.items()))


def _members(cfg: dict, tensors: dict[str, torch.Tensor], where: str) -> tuple[dict[str, Member], float | None]:
    """Map every source module to a Member keyed by (stored, slot, expert); also the adapter's one
    scaling, or None when modules differ (then pack_tensors makes the uniform form first)."""
    ranks = ModuleRanks(cfg, where)  # the patterns read once, not once per tensor
    params = list(cfg.get("target_parameters") or [])
    out: dict[str, Member] = {}
    scales = {}
    fused_params: dict[str, list[str]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if not m:
            raise PackedError(f"{where}: tensor {key} is not <module>.lora_A/B.weight")
        mod, ab = m["mod"], m["ab"]
        parts = mod.split(".")
        parts[-1] = EXPERT_ALIASES.get(parts[-1], parts[-1])
        mod = ".".join(parts)
        expert, layout = None, "plain"
        fused = PEFT_FUSED.match(mod) if params else None
        if fused:  # PEFT fused experts: which parameter is told by the nesting depth
            depth = fused["depth"].count(".base_layer")
            parent = fused["pre"]
            if parent not in fused_params:
                fused_params[parent] = fused_expert_params(
                    parent, params, lambda k: tuple(tensors[k].shape) if k in tensors else None, where, PackedError)
            param = fused_params[parent][depth]
            leaf = param
            rank, alpha = ranks.of(f"{parent}.{param}")
            layout = "peft_experts_" + ab
        else:
            e = _EXPERT.match(mod)
            if e:
                parent, leaf, expert = e["pre"], e["proj"], int(e["e"])
            else:
                parent, _, leaf = mod.rpartition(".")
            if leaf in PRESTACKED:  # one A for every slice: the pool holds them stacked, and its fill asserted
                raise PackedError(f"{where}: {key}: {leaf} is already stacked, which the packed form does itself "
                                  "from q/k/v_proj and gate/up_proj; publish this adapter without --pack")
            rank, alpha = ranks.of(m["mod"])  # PEFT matched patterns against the real name (w1, not gate_proj)
        scales[key] = scaling(cfg, rank, alpha)
        if leaf == "gate_up_proj" and layout.startswith("peft"):
            slots = [("gate_up_proj", 0, 2), ("gate_up_proj", 1, 2)]
        elif leaf in FUSE:
            slots = [FUSE[leaf]]
        else:
            slots = [(leaf, 0, 1)]
        for name, slot, n in slots:
            stored = f"{parent}.{name}"
            mk = f"{stored}|{slot}|{expert}"
            mem = out.setdefault(mk, Member(stored, slot, n, expert, layout, rank))
            mem.src[ab] = key
            mem.t[ab] = t
    for mem in out.values():
        if set(mem.t) != {"A", "B"}:
            raise PackedError(f"{where}: {mem.stored} has lora_{''.join(mem.t)} but not both A and B")
    if len({round(s, 12) for s in scales.values()}) > 1:
        return out, None
    return out, (next(iter(scales.values())) if scales else scaling(cfg, int(ranks.r), float(ranks.alpha)))


def _member_views(mem: Member) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, B) as [(E,) r, in] and [(E,) out, r] views of the source tensors."""
    A, B = mem.t["A"], mem.t["B"]
    if mem.layout.startswith("peft"):
        R = mem.rank
        if A.dim() != 2 or B.dim() != 2 or A.shape[0] % R or A.shape[0] != B.shape[1]:
            raise PackedError(f"fused experts {mem.src['A']}: shapes {tuple(A.shape)}/{tuple(B.shape)} do not fit rank {R}")
        E = A.shape[0] // R
        A3, B3 = A.reshape(E, R, A.shape[1]), B.reshape(B.shape[0], R, E).permute(2, 0, 1)
        if mem.slices == 2:  # fused gate_up_proj: one A for both halves, B [E, 2*inter, R] split in two
            half = B3.shape[1] // 2
            B3 = B3[:, mem.slot * half:(mem.slot + 1) * half]
        return A3, B3
    return A, B


def pack_tensors(cfg: dict, tensors: dict[str, torch.Tensor], where: str, num_experts: int | None = None,
                 stack_outs: dict[str, int] | None = None):
    """Returns (stored list in pool order, mint dict without base, packed adapter_config).

    ``stack_outs``: the base's attention members' output widths (``{"q_proj": 128, ...}``, see
    BaseModel.packed_identity), for zeros of one the adapter lacks; without them such an adapter
    is refused unless a same-width partner gives the width.
    ``mint["peft_config"]`` and the part map describe what unpack gives back: the
    source adapter, or its uniform form when modules had different scalings."""
    members, scale = _members(cfg, tensors, where)
    if scale is None:  # SGLang has one scaling per adapter: B pre-scaled, r = lora_alpha = R (exact)
        try:
            cfg, tensors = uniform_lora(cfg, tensors, where=where)
        except InvalidAdapter as exc:
            raise PackedError(str(exc)) from None
        members, scale = _members(cfg, tensors, where)
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in DTYPE_NAMES:
        raise PackedError(f"{where}: tensors must share one of F32/F16/BF16, found {sorted(map(str, dtypes))}")
    dtype = next(iter(dtypes))
    R = max(m.rank for m in members.values())

    groups: dict[str, list[Member]] = {}
    for m in members.values():
        groups.setdefault(m.stored, []).append(m)
    stored: list[tuple[str, torch.Tensor]] = []
    tmap: dict[str, dict] = {}
    for name, mems in groups.items():
        _build(name, mems, mems[0].slices, R, dtype, num_experts, where, stored, tmap, stack_outs or {})
    stored.sort(key=lambda kv: _order(kv[0]))
    mint = {"rank": R, "alpha": scale * R, "dtype": DTYPE_NAMES[dtype], "tensors": tmap,
            "peft_config": cfg, "target_modules": _targets(members)}
    pcfg = {k: v for k, v in cfg.items() if k not in ("rank_pattern", "alpha_pattern", "target_parameters")}
    pcfg.update(r=R, lora_alpha=scale * R, target_modules=mint["target_modules"])
    if pcfg.get("use_rslora"):  # scale is alpha / sqrt(r) already; SGLang reads lora_alpha / r only
        pcfg["use_rslora"] = False
    return stored, mint, pcfg


def _member_leaf(fused: str, slot: int) -> str:
    return STACKS[fused.rsplit(".", 1)[1]][slot]


def _order(name: str):
    m = _LAYER.search(name)
    return (0, int(m.group(1)), name) if m else (1, 0, name)


def _targets(members: dict[str, Member]) -> list[str]:
    out = set()
    for m in members.values():
        leaf = m.stored.rsplit(".", 1)[1]
        out.update(STACKS.get(leaf, (leaf,)))
    return sorted(out)


def _build(name, mems, n, R, dtype, num_experts, where, stored, tmap, stack_outs):
    by_slot: dict[int, dict[int | None, Member]] = {}
    for m in mems:
        by_slot.setdefault(m.slot, {})[m.expert] = m
    views = {m: _member_views(m) for m in mems}
    # expert dimension: None (dense), or E
    per_expert = any(m.expert is not None for m in mems)
    E = None
    if per_expert:
        if any(m.expert is None for m in mems):
            raise PackedError(f"{where}: {name} mixes per-expert and whole-module tensors")
        for slot, d in by_slot.items():
            want = num_experts or (max(d) + 1)
            missing = sorted(set(range(want)) - set(d))
            if missing or max(d) >= want:
                raise PackedError(f"{where}: {name} slot {slot} is missing expert(s) {missing[:8]} "
                                  f"(has {len(d)} of {want})")
        E = num_experts or (max(max(d) for d in by_slot.values()) + 1)
    if not per_expert:  # 3D: A and B may differ (shared-outer [1, ...] on one side)
        lead_a = {tuple(views[m][0].shape[:-2]) for m in mems}
        lead_b = {tuple(views[m][1].shape[:-2]) for m in mems}
        if len(lead_a) != 1 or len(lead_b) != 1 or len(next(iter(lead_a))) != len(next(iter(lead_b))):
            raise PackedError(f"{where}: {name} members disagree on the expert dimension")
    # shapes per slot: (in, out); from any member of the slot
    shape = {}
    for slot, d in by_slot.items():
        a, b = views[next(iter(d.values()))]
        shape[slot] = (a.shape[-1], b.shape[-2])
    for slot in range(n):
        if slot not in shape:
            shape[slot] = _missing_shape(name, slot, shape, stack_outs, where)
    ins = {s[0] for s in shape.values()}
    if len(ins) != 1:
        raise PackedError(f"{where}: {name} members have different input widths {sorted(ins)}")
    din = ins.pop()
    outs = [shape[s][1] for s in range(n)]
    lead_a, lead_b = ([E], [E]) if per_expert else (list(next(iter(lead_a))), list(next(iter(lead_b))))
    A = torch.zeros(lead_a + [n * R, din], dtype=dtype)
    B = torch.zeros(lead_b + [sum(outs), R], dtype=dtype)
    partsA, partsB = [], []
    off = [sum(outs[:s]) for s in range(n)]
    for m in mems:
        a, b = views[m]
        r = a.shape[-2]
        if b.shape[-1] != r or r > R:
            raise PackedError(f"{where}: {m.src['A']} rank {r} and B rank {b.shape[-1]} disagree")
        ex = m.expert
        dA = A[ex] if ex is not None else A
        dB = B[ex] if ex is not None else B
        boxA = [[0, d] for d in a.shape[:-2]] + [[m.slot * R, m.slot * R + r], [0, din]]
        boxB = [[0, d] for d in b.shape[:-2]] + [[off[m.slot], off[m.slot] + b.shape[-2]], [0, r]]
        if a.dim() == 3 and a.shape[0] != dA.shape[0]:
            raise PackedError(f"{where}: {m.src['A']} has {a.shape[0]} experts, {name} has {dA.shape[0]}")
        dA[tuple(slice(*x) for x in boxA)] = a
        dB[tuple(slice(*x) for x in boxB)] = b
        partsA.append({"src": m.src["A"], "expert": ex, "box": boxA, "layout": "peft_experts_A" if m.layout.startswith("peft") else "plain"})
        if m.layout.startswith("peft") and m.slices == 2:  # fused gate_up: B listed once, both halves
            if m.slot == 0:
                full = [[0, d] for d in b.shape[:-2]] + [[0, sum(outs)], [0, r]]
                partsB.append({"src": m.src["B"], "expert": ex, "box": full, "layout": "peft_experts_B"})
        else:
            partsB.append({"src": m.src["B"], "expert": ex, "box": boxB, "layout": "peft_experts_B" if m.layout.startswith("peft") else "plain"})
    partsA, partsB = _collapse(partsA, E), _collapse(partsB, E)
    suffix = ".lora_{}.weight"
    stored.append((name + suffix.format("A"), A))
    stored.append((name + suffix.format("B"), B))
    tmap[name + suffix.format("A")] = {"slices": n, "parts": partsA}
    tmap[name + suffix.format("B")] = {"slices": n, "parts": partsB}


def _missing_shape(name: str, slot: int, shape: dict[int, tuple[int, int]], stack_outs: dict[str, int],
                   where: str) -> tuple[int, int]:
    """(in, out) of the zeros for member ``slot`` of stack ``name``, which the adapter lacks: a same-width
    partner's (SGLang's own zeros_like), else the base's width of an attention member. Every member of a
    stack reads the same input."""
    leaf = _member_leaf(name, slot)
    partner = SAME_WIDTH.get(leaf)
    if partner and FUSE[partner][1] in shape:
        return shape[FUSE[partner][1]]
    path = module_path(name)
    din = next(iter(shape.values()))[0]
    if path is not None and path.parent == "self_attn" and stack_outs.get(leaf):
        return din, int(stack_outs[leaf])
    have = ", ".join(_member_leaf(name, s) for s in sorted(shape))
    raise PackedError(f"{where}: {name}: the adapter has {have} but lacks {leaf}, which the packed form stores "
                      f"stacked with it as zeros of the base model's width, unknown here; convert with "
                      f"`mint pack --base MODEL`, or publish this adapter without --pack")


_EXPERT_IN_NAME = re.compile(r"\.experts\.(\d+)\.")


def _collapse(parts: list[dict], E: int | None) -> list[dict]:
    """Per-expert parts 0..E-1 with one box -> one part whose src has ``{e}`` (keeps the header small:
    48 layers x 128 experts x 3 projections would otherwise be 36,864 entries)."""
    if not E:
        return parts
    groups: dict[tuple, list[dict]] = {}
    rest = []
    for p in parts:
        m = _EXPERT_IN_NAME.search(p["src"]) if p["expert"] is not None else None
        if not m or int(m.group(1)) != p["expert"]:
            rest.append(p)
            continue
        tmpl = p["src"][:m.start()] + ".experts.{e}." + p["src"][m.end():]
        groups.setdefault((tmpl, json.dumps(p["box"]), p["layout"]), []).append(p)
    for (tmpl, box, layout), ps in groups.items():
        if sorted(p["expert"] for p in ps) == list(range(E)):
            rest.append({"src": tmpl, "expert": "each", "experts": E, "box": json.loads(box), "layout": layout})
        else:
            rest.extend(ps)
    return rest


def unpack_tensors(mint: dict, tensors: dict[str, torch.Tensor], where: str = "packed adapter",
                   max_experts: int | None = None) -> dict[str, torch.Tensor]:
    """Every source tensor, bit-exact, from the stored tensors and the part map. The part map is
    checked whole first (part_map.py: bounded, inside the tensors, no overlaps), so a hostile header
    is refused before anything is copied. ``max_experts``: the base model's expert count (0: dense), None if unknown."""
    plan = checked_parts(mint, {name: list(t.shape) for name, t in tensors.items()}, where, max_experts)
    out = {}
    for name, parts in plan.items():
        t = tensors[name]
        for p in parts:
            if p["src"] in out:  # fused gate_up_proj: PEFT's one A is listed for both halves
                continue
            v = t[p["expert"]] if p["expert"] is not None else t
            v = v[tuple(slice(*x) for x in p["box"])]
            if p["layout"] == "peft_experts_A":
                v = v.reshape(-1, v.shape[-1])
            elif p["layout"] == "peft_experts_B":
                v = v.permute(1, 2, 0).reshape(v.shape[1], -1)
            out[p["src"]] = v.contiguous().clone()
    return out


def base_identity(model_dir: str) -> dict:
    """What a packed file records about its base model (from config.json, read as the catalog reads it:
    adapters/base_model.py read_base_model): BaseModel.packed_identity, the catalog's, plus the text model's
    model_type, which the engine checks too (Llama-4: ``llama4_text``, from text_config)."""
    try:
        base, text = read_base_model(model_dir)
    except InvalidAdapter as exc:
        raise PackedError(f"--base {model_dir}: {exc}") from None
    ident = base.packed_identity()
    if "model_type" in text:
        ident["model_type"] = text["model_type"]
    return ident


def pack_folder(src: str, dst: str, base_dir: str | None = None) -> str:
    """Write DST/adapter_config.json + DST/adapter.mintpack from the PEFT folder SRC."""
    from sglang_mint.packed.format import PACKED_FILE
    from sglang_mint.packed.writer import write_packed

    weights = peft_weight_files(dst)
    if weights:  # a folder holding both forms is refused by every reader (adapters/folder_form.py)
        raise PackedError(f"{dst} holds {', '.join(weights)}: `mint pack` writes a packed folder of its own; "
                          "name an empty or new DST")
    cfg, tensors = read_peft(src)
    base = base_identity(base_dir) if base_dir else {"name": cfg.get("base_model_name_or_path")}
    stored, mint, pcfg = pack_tensors(cfg, tensors, src, num_experts=base.get("num_experts"),
                                      stack_outs=base.get("stack_outs"))
    mint["base"] = base
    os.makedirs(dst, exist_ok=True)
    out = os.path.join(dst, PACKED_FILE)
    write_packed(out, stored, mint)
    with open(os.path.join(dst, CONFIG), "w") as f:
        json.dump(pcfg, f, indent=2)
    return out


def pack_bytes(cfg_bytes: bytes, weights: bytes, base: dict, where: str) -> tuple[bytes, bytearray, dict]:
    """The packed folder's two files in memory: (adapter_config.json, adapter.mintpack, mint metadata).

    ``base`` is what the file records about its base model (see base_identity);
    its ``num_experts`` and ``stack_outs`` steer the conversion as in pack_folder.
    The same input gives the same bytes (the catalog stores them content-addressed)."""
    from sglang_mint.packed.writer import encode_packed

    cfg, tensors = parse_peft(cfg_bytes, weights, where)
    stored, mint, pcfg = pack_tensors(cfg, tensors, where, num_experts=base.get("num_experts"),
                                      stack_outs=base.get("stack_outs"))
    mint["base"] = base
    data = encode_packed(stored, mint, where)
    return json.dumps(pcfg, indent=2).encode(), data, mint


def unpack_folder(packed: str, out: str) -> str:
    """Write the source PEFT folder (config and every tensor, bit-exact) back from a packed file.

    For an adapter whose modules had different scalings that is its uniform form (see
    pack_tensors): the same deltas, not the same bytes as the folder that was packed."""
    from safetensors.torch import save_file

    from sglang_mint.packed.format import PACKED_FILE
    from sglang_mint.packed.reader import read_packed

    path = os.path.join(packed, PACKED_FILE) if os.path.isdir(packed) else packed
    if os.path.isfile(os.path.join(out, PACKED_FILE)):
        raise PackedError(f"{out} holds {PACKED_FILE}: `mint pack --unpack` writes a PEFT folder of its own; "
                          "name an empty or new DST")
    p = read_packed(path, pin=False)
    os.makedirs(out, exist_ok=True)
    save_file(unpack_tensors(p.mint, p.tensors, path), os.path.join(out, WEIGHTS))
    with open(os.path.join(out, CONFIG), "w") as f:
        json.dump(p.mint["peft_config"], f, indent=2)
    return out
