"""The SGLang glue: the only package of sglang-mint that imports sglang (docs/architecture.md, "The doors").

SGLang calls :func:`register` (entry point ``sglang.srt.plugins: mint``) in every
process it starts. It only declares hooks with SGLang's registries; each passes
straight through unless the server was launched with ``--enable-mint``.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_mint")

_registered = False


def register() -> None:
    """Declare the hooks every process needs; idempotent. A process declares its role's hooks
    only once SGLang tells it its role (``hooks.py``): the detokenizer would otherwise import
    the HTTP server and the scheduler, about 5 s of imports per process on a 2-core machine."""
    global _registered
    if _registered:
        return
    _registered = True

    from sglang_mint.sglang import backend, hooks

    hooks.register_for("all")
    backend.register_backend()  # the name `--lora-backend mint`
