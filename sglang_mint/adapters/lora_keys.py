"""What a PEFT LoRA tensor name means: its module, its rank and alpha, its scaling.

One place for PEFT's rules, shared by the import checks (``peft.py``,
shapes only, no torch), ``uniform_rank.py`` and the packed converter:

* ``rank_pattern`` / ``alpha_pattern`` keys are matched against the module
  path as PEFT's ``get_pattern_key`` does: the first key (dict order) with
  ``re.match(rf"(.*\\.)?({key})$", path)`` wins, else ``r`` / ``lora_alpha``.
  Example: ``{"v_proj": 2}`` gives ``...layers.0.self_attn.v_proj`` rank 2 and
  leaves ``...q_proj`` at ``r``; ``{".*\\.gate_up_proj": 8}`` is how PEFT 0.21
  records the doubled rank of fused MoE experts. The keys come from tenants and
  are never run as regexes: pattern_keys.py says which keys are accepted and
  how they are matched to give the regex's answer.
* scaling is ``alpha / r``, or ``alpha / sqrt(r)`` with ``use_rslora``.
* PEFT 0.21's fused experts (``target_parameters``) nest one wrapper per
  parameter: ``...mlp.experts.base_layer.lora_A.weight`` (depth 1) and
  ``...mlp.experts.lora_A.weight`` (depth 0). Which parameter each depth holds
  is read from the shapes (``fused_expert_params``); the pattern path is then
  ``...mlp.experts.gate_up_proj``, what PEFT matched when it built them.
"""

from __future__ import annotations

import math
import re
from typing import Callable, Sequence

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.pattern_keys import PatternTable

# <module>.lora_A.weight, also <module>.lora_A.<adapter name>.weight
KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[A-Za-z0-9_]+)?\.weight$")
# ...mlp.experts (+ .base_layer per nesting depth): PEFT fused experts, only under target_parameters
PEFT_FUSED = re.compile(r"^(?P<pre>.*\.experts)(?P<depth>(?:\.base_layer)*)$")
# What PEFT's LoraConfig gives an adapter_config.json without lora_alpha.
PEFT_DEFAULT_ALPHA = 8


def pattern_value(patterns: dict | None, path: str, default, field: str = "pattern"):
    """PEFT's ``get_pattern_key`` rule: the value of the first key that matches the end of ``path``."""
    return PatternTable(patterns, field).value(path, default)


class ModuleRanks:
    """(r, alpha) of each module under a config's patterns, the patterns read once.

    ``ModuleRanks(config).of("...layers.0.self_attn.v_proj")`` is ``rank_alpha(config, path)``."""

    def __init__(self, config: dict, where: str = "adapter_config.json"):
        self.r, self.alpha = config["r"], config.get("lora_alpha", PEFT_DEFAULT_ALPHA)
        self.ranks = PatternTable(config.get("rank_pattern"), "rank_pattern", where)
        self.alphas = PatternTable(config.get("alpha_pattern"), "alpha_pattern", where)

    def of(self, path: str) -> tuple[int, float]:
        return int(self.ranks.value(path, self.r)), float(self.alphas.value(path, self.alpha))


def rank_alpha(config: dict, path: str) -> tuple[int, float]:
    """(r, alpha) of the module at ``path`` under ``config``'s patterns."""
    return ModuleRanks(config).of(path)


def scaling(config: dict, r: int, alpha: float) -> float:
    """What PEFT multiplies B @ A by: alpha / r, or alpha / sqrt(r) under use_rslora."""
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def is_uniform(config: dict) -> bool:
    """True when every module has rank r and scaling lora_alpha / r, the only thing SGLang reads."""
    return not (config.get("rank_pattern") or config.get("alpha_pattern") or config.get("use_rslora"))


def fused_expert_params(parent: str, params: Sequence[str], shape_of: Callable[[str], Sequence[int] | None],
                        where: str, error: type[Exception] = InvalidAdapter) -> list[str]:
    """Which target parameter each nesting depth of PEFT's fused experts under ``parent`` holds.

    ``shape_of(key)`` is the shape of tensor ``key`` or None. adapter_config.json
    lists target_parameters as a set (order varies between saves), so the
    shapes decide: gate_up_proj's A reads the hidden size that down_proj's B
    writes, and its B writes twice what down_proj's A reads. Example (hidden
    64, expert width 32): depth 0 A [E*r, 32], B [64, r*E] is down_proj; depth 1
    A [E*2r, 64], B [64, 2r*E] is gate_up_proj.
    """
    depths = []
    while shape_of(f"{parent}{'.base_layer' * len(depths)}.lora_A.weight") is not None:
        depths.append(f"{parent}{'.base_layer' * len(depths)}")
    if len(depths) != len(params):
        raise error(f"{where}: {parent} has {len(depths)} fused-expert wrappers, "
                    f"target_parameters lists {list(params)}")
    if sorted(params) != ["down_proj", "gate_up_proj"]:
        return list(reversed(params))  # one parameter, or names we cannot tell apart by shape
    (a0, b0), (a1, b1) = [(shape_of(d + ".lora_A.weight"), shape_of(d + ".lora_B.weight")) for d in depths]
    if b0 is None or b1 is None or len(a0) != 2 or len(a1) != 2 or len(b0) != 2 or len(b1) != 2:
        raise error(f"{where}: fused experts under {parent} need 2-D lora_A and lora_B at every depth")
    if a0[1] == b1[0] and b0[0] == 2 * a1[1]:
        return ["gate_up_proj", "down_proj"]
    if a1[1] == b0[0] and b1[0] == 2 * a0[1]:
        return ["down_proj", "gate_up_proj"]
    raise error(f"{where}: cannot tell gate_up_proj from down_proj under {parent} by their shapes: lora_A/lora_B "
                f"{list(a0)}/{list(b0)} at {depths[0]}, {list(a1)}/{list(b1)} at {depths[1]} (expected gate_up_proj "
                f"A [E*r, hidden], B [2*width, r*E] and down_proj A [E*r, width], B [hidden, r*E])")
