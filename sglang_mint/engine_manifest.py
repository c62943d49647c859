"""The shape of the glue's one list of engine internals, and the checks over it.

``sglang/hooks.py`` holds the rows: ``HOOKS`` (what the glue hooks) and ``INTERNALS``
(the private state it reads or writes without a hook). A row is plain data naming
dotted targets, so what it is and how a process finds what is missing knows no
engine: ``rows_for`` picks a process's rows, ``missing_internals`` resolves them.
"""

from __future__ import annotations

import pkgutil
from typing import NamedTuple

from sglang_mint.errors import has_attribute


class Hook(NamedTuple):
    role: str  # the process that needs it: "all", "frontend" (launcher, tokenizer manager, DP controller), ...
    target: str
    kind: str  # BEFORE, AFTER, AROUND, REPLACE
    function: str  # module:name under sglang_mint.sglang
    cpu_only: bool = False


class Internal(NamedTuple):
    role: str  # the process that uses it, as in Hook; "all": every process
    owner: str  # a dotted module or class, or the name of an instance given to missing_internals
    names: str  # its attributes the glue reads or writes, ", "-separated; "a.b": b of a
    use: str
    module: str  # which modules of sglang_mint.sglang do


def rows_for(hooks, role: str, has_cuda: bool) -> list[Hook]:
    """The rows a process of ``role`` needs, the "all" rows included."""
    return [h for h in hooks if h.role in ("all", role) and not (h.cpu_only and has_cuda)]


def missing_internals(internals, role: str, instances: dict) -> list[str]:
    """Every attribute of ``internals`` missing in a process of ``role``: the rows of ``role`` and "all"
    on a module or class, and those on an instance given in ``instances`` by the row's owner name
    (``{"lora_manager": ..., "memory_pool": ...}``); ``"module.attr"`` for each."""
    missing = []
    for row in internals:
        if row.role not in ("all", role) or ("." not in row.owner and instances.get(row.owner) is None):
            continue
        try:
            owner = pkgutil.resolve_name(row.owner) if "." in row.owner else instances[row.owner]
        except (ImportError, AttributeError):
            missing.append(row.owner)
            continue
        missing += [f"{row.owner}.{name}" for name in row.names.split(", ") if not has_attribute(owner, name)]
    return missing
