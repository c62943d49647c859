"""Module names from a tenant's adapter_config.json, matched against module paths without running a regex.

PEFT matches ``rank_pattern`` / ``alpha_pattern`` keys with ``re.match(rf"(.*\\.)?({key})$", path)``
and ``target_modules`` entries as ``path == t or path.endswith("." + t)``. A tenant's regex such as
``(a|aa)*b`` backtracks for seconds per character of a path while holding the GIL (3.5 s at 36
characters, 1.6x more per character), so keys are restricted to what PEFT and its users write
(PATTERN_KEY_HELP) and matched as dotted suffixes, which is what the regex does for them:

    "v_proj"                     ...layers.0.self_attn.v_proj, not ...self_attn.kv_proj
    "layers.1.self_attn.q_proj"  that module only ("\\." for a dot reads the same)
    ".*\\.gate_up_proj"          any path ending in ".gate_up_proj" (PEFT 0.21 writes this key)
    "q_proj|v_proj"              either

A lookup walks the path's segments from the end through a trie of the keys' reversed segments:
linear in the path, whatever the number or length of the keys.
"""

from __future__ import annotations

import re
from typing import Iterator

from sglang_mint.adapters.errors import InvalidAdapter

# One alternative of a pattern key: PEFT's optional ".*\." and a dotted module path ("\." or "." between names).
# Linear to check: a name never holds "." or "\", so the regex has one way on at each character.
_ALTERNATIVE = re.compile(r"(?P<anywhere>\.\*\\\.)?(?P<path>[A-Za-z0-9_]+(?:\\?\.[A-Za-z0-9_]+)*)")
PATTERN_KEY_HELP = ("a module name or dotted module path (letters, digits, '_', '.'), optionally after PEFT's "
                    "'.*\\.', or such names joined by '|'")


class _Node:
    __slots__ = ("children", "whole", "proper")

    def __init__(self):
        self.children: dict[str, _Node] = {}
        self.whole = None  # entry of a key matching this suffix, or the whole path
        self.proper = None  # entry of a ".*\."-key: matches this suffix only when something precedes it


class SuffixTable:
    """Dotted names, each matching a path equal to it or ending in ``"." + name``.

    Example: after ``add("self_attn.q_proj", 1)``, ``hits("m.layers.0.self_attn.q_proj")`` yields 1 and
    ``hits("m.layers.0.self_attn.k_proj")`` nothing. The first entry added for a name is kept."""

    def __init__(self):
        self.root = _Node()

    def add(self, dotted: str, entry, proper: bool = False) -> None:
        node = self.root
        for seg in reversed(dotted.split(".")):
            node = node.children.setdefault(seg, _Node())
        if proper and node.proper is None:
            node.proper = entry
        elif not proper and node.whole is None:
            node.whole = entry

    def hits(self, path: str) -> Iterator:
        """The entries of every name that matches ``path``, shortest name first."""
        segs = path.split(".")
        node = self.root
        for i in range(len(segs) - 1, -1, -1):
            node = node.children.get(segs[i])
            if node is None:
                return
            if node.whole is not None:
                yield node.whole
            if i and node.proper is not None:
                yield node.proper


class PatternTable:
    """``rank_pattern`` or ``alpha_pattern`` ({key: value}) as PEFT's get_pattern_key reads it: the value
    of the first key (dict order) that matches a path.

    Example: {"v_proj": 2, ".*\\.gate_up_proj": 8} gives ``...self_attn.v_proj`` 2, ``...mlp.experts.gate_up_proj``
    8 and ``...q_proj`` the default. A key of any other form raises InvalidAdapter naming ``field`` and the key."""

    def __init__(self, patterns: dict | None, field: str, where: str = "adapter_config.json"):
        self.table = SuffixTable()
        for order, (key, value) in enumerate((patterns or {}).items()):
            for alternative in key.split("|") if isinstance(key, str) else [""]:
                m = _ALTERNATIVE.fullmatch(alternative)
                if m is None:
                    raise InvalidAdapter(f"{where}: {field} key {key!r} is not {PATTERN_KEY_HELP}; other regexes "
                                         f"are refused (matching them has no bound on its cost)")
                self.table.add(m["path"].replace("\\.", "."), (order, value), proper=bool(m["anywhere"]))

    def value(self, path: str, default):
        return min(self.table.hits(path), default=(None, default), key=lambda hit: hit[0])[1]
