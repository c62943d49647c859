"""Any PEFT LoRA -> the one-rank, one-scaling form SGLang serves exactly.

SGLang gives an adapter ONE rank ``r`` and ONE scaling ``lora_alpha / r``: it
ignores ``rank_pattern``, ``alpha_pattern`` and ``use_rslora``. Such adapters
would crash its pool (a module of rank 16 in an adapter of r 8) or be served
with the wrong scaling without a word. ``uniform_lora`` rewrites them so that
what SGLang computes is exactly what PEFT computes.

torch is imported only when a rewrite is needed: the catalog works without it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.lora_keys import KEY, PEFT_FUSED, ModuleRanks, fused_expert_params, is_uniform, scaling

if TYPE_CHECKING:
    import torch


def uniform_lora(config: dict, tensors: dict[str, "torch.Tensor"], *,
                 where: str = "adapter") -> tuple[dict, dict[str, "torch.Tensor"]]:
    """(config, tensors) with one rank R and scaling exactly 1.0, computing the same deltas as PEFT.

    Semantics, for every module m with PEFT's r_m, alpha_m (``rank_pattern`` /
    ``alpha_pattern``, see lora_keys.py) and s_m = alpha_m / r_m
    (alpha_m / sqrt(r_m) under ``use_rslora``)::

        R = max_m r_m
        A'_m = cat([A_m, zeros(R - r_m, in)])                  # [R, in]
        B'_m = cat([(B_m.float() * s_m).to(B_m.dtype),
                    zeros(out, R - r_m)], dim=-1)              # [out, R]
        config' = config - {rank_pattern, alpha_pattern} + {r: R, lora_alpha: R, use_rslora: False}

    so SGLang's ``lora_alpha / r`` is 1.0 and B'_m @ A'_m == s_m * B_m @ A_m.
    Shape: A [r_m, in] / B [out, r_m], 3D experts A [E, r_m, in] / B [E, out, r_m]
    (padded on the rank dim the same way), PEFT fused experts A [E*r_m, in] /
    B [out, r_m*E] (PEFT's own reshape: A.reshape(E, r, in), B.reshape(out, r, E)).

    Example: r=8, lora_alpha=16, rank_pattern {"v_proj": 4}, alpha_pattern
    {"o_proj": 32}: q_proj keeps rank 8 and B * 2.0, v_proj A [4, in] becomes
    [8, in] with 4 zero rows and B * 4.0 (16/4) gets 4 zero columns, o_proj
    B * 4.0 (32/8); the config says r=8, lora_alpha=8.

    An adapter with no patterns and no rsLoRA is already uniform: the SAME
    ``config`` and ``tensors`` objects come back, nothing is copied (this runs
    on the cold-load path). Otherwise new dicts come back; a tensor that needs
    no change (rank R, scaling 1) is passed through uncopied. Raises
    InvalidAdapter naming the tensor when a rank disagrees with the config.
    """
    if is_uniform(config):
        return config, tensors
    import torch

    plan = _plan(config, {k: tuple(t.shape) for k, t in tensors.items()}, where)
    R = max(p[2] for p in plan)
    out: dict[str, torch.Tensor] = {}
    for ka, kb, r, s, fused in plan:
        A, B = tensors[ka], tensors[kb]
        if s != 1.0:
            B = (B.to(torch.promote_types(B.dtype, torch.float32)) * s).to(B.dtype)
        if r != R:
            if fused:  # [E*r, in] -> [E, r, in] -> pad -> [E*R, in];  [out, r*E] -> [out, r, E] -> pad -> [out, R*E]
                E = A.shape[0] // r
                A = _pad(A.reshape(E, r, A.shape[1]), 1, R).reshape(E * R, A.shape[1])
                B = _pad(B.reshape(B.shape[0], r, E), 1, R).reshape(B.shape[0], R * E)
            else:
                A, B = _pad(A, A.dim() - 2, R), _pad(B, B.dim() - 1, R)
        out[ka], out[kb] = A, B
    out = {k: out[k] for k in tensors}  # the caller's key order
    new = {k: v for k, v in config.items() if k not in ("rank_pattern", "alpha_pattern")}
    new.update(r=R, lora_alpha=R, use_rslora=False)
    return new, out


class _Module(NamedTuple):
    a: str  # key of lora_A
    b: str  # key of lora_B
    r: int  # PEFT's rank of this module
    s: float  # PEFT's scaling of this module
    fused: bool  # PEFT's fused experts: A [E*r, in], B [out, r*E]


def _plan(config: dict, shapes: Mapping[str, Sequence[int]], where: str) -> list[_Module]:
    """Each module's keys, PEFT rank and scaling, checked against ``shapes`` ({key: shape})."""
    params = list(config.get("target_parameters") or [])
    ranks = ModuleRanks(config, where)
    fused_cache: dict[str, list[str]] = {}
    modules: dict[str, dict[str, str]] = {}
    for key in shapes:
        m = KEY.match(key)
        if not m:
            raise InvalidAdapter(f"{where}: tensor {key!r} is not <module>.lora_A/lora_B.weight")
        modules.setdefault(m["module"], {})[m["ab"]] = key

    plan = []
    for module, keys in modules.items():
        if set(keys) != {"A", "B"}:
            raise InvalidAdapter(f"{where}: module {module!r} has lora_{''.join(keys)} but not both A and B")
        ka, kb = keys["A"], keys["B"]
        a, b = shapes[ka], shapes[kb]
        fused = PEFT_FUSED.match(module) if params else None
        if fused:
            parent = fused["pre"]
            if parent not in fused_cache:
                fused_cache[parent] = fused_expert_params(parent, params, shapes.get, where)
            path = f"{parent}.{fused_cache[parent][fused['depth'].count('.base_layer')]}"
        else:
            path = module
        r, alpha = ranks.of(path)
        if fused:
            if len(a) != 2 or len(b) != 2 or a[0] % r or b[1] != a[0]:
                raise InvalidAdapter(f"{where}: fused experts {ka} {list(a)} / {kb} {list(b)} do not fit rank {r} "
                                     f"(expected [E*{r}, in] and [out, {r}*E])")
        elif len(a) not in (2, 3) or len(b) != len(a) or a[-2] != r or b[-1] != r:
            raise InvalidAdapter(f"{where}: {ka} {list(a)} / {kb} {list(b)} do not match rank r={r} of {path} "
                                 f"(expected [r, in] and [out, r], or [E, r, in] and [E, out, r])")
        s = scaling(config, r, alpha)
        if not (math.isfinite(s) and s > 0):  # peft.check_config refuses such alphas; this runs without it too
            raise InvalidAdapter(f"{where}: {path} has scaling {s} (alpha {alpha}, rank {r}); a positive finite "
                                 f"lora_alpha / alpha_pattern value is required")
        plan.append(_Module(ka, kb, r, s, bool(fused)))
    return plan


def uniform_size(config: dict, header: Mapping[str, tuple[str, Sequence[int]]], where: str = "adapter") -> int:
    """Bytes of the adapter's tensors once ``uniform_lora`` has rewritten them, from the
    safetensors header alone ({key: (dtype, shape)}, as read_safetensors_header returns).

    Every LoRA tensor has one dimension proportional to its module's rank, so padding
    module m from r_m to R multiplies its bytes by R / r_m. Example: r=4 with
    rank_pattern {"q_proj": 32}: every other module's tensors grow 8x."""
    from sglang_mint.adapters.safetensors_io import DTYPES

    def nbytes(key: str) -> int:
        dtype, shape = header[key]
        return DTYPES[dtype][0] * math.prod(shape)

    if is_uniform(config):
        return sum(nbytes(k) for k in header)
    plan = _plan(config, {k: shape for k, (_, shape) in header.items()}, where)
    R = max(m.r for m in plan)
    return sum((nbytes(m.a) + nbytes(m.b)) * R // m.r for m in plan)


def _pad(t: "torch.Tensor", dim: int, size: int) -> "torch.Tensor":
    """``t`` with zeros appended along ``dim`` up to ``size``. Example: [4, 128] on dim 0 to 8 -> [8, 128]."""
    import torch

    shape = list(t.shape)
    shape[dim] = size
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out.narrow(dim, 0, t.shape[dim]).copy_(t)
    return out
