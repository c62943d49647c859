"""The SGLang glue: the only package of sglang-mint that imports sglang.

SGLang calls :func:`register` (entry point ``sglang.srt.plugins: mint``) in every
process it starts (launcher, tokenizer manager, schedulers, detokenizer),
before it parses arguments or builds the engine. ``register`` only declares
hooks through SGLang's ``HookRegistry`` and SGLang's own registries; nothing is
patched on disk. Each hook passes straight through unless the server was
launched with ``--enable-mint``, so without the flag SGLang behaves as stock.
"""

from __future__ import annotations

import logging

logger = logging.getLogger("sglang_mint")

_registered = False


def register() -> None:
    """Declare the hooks every process needs. Idempotent: a second call does nothing.

    Each process learns its role from a hook SGLang calls, and only then declares and
    applies that role's hooks (``hooks.HOOKS``; the detokenizer would otherwise import the
    HTTP server and the scheduler, about 5 s of imports per process on a 2-core machine):

    - the launcher parses the command line (``ServerArgs.from_cli_args``): it is the
      frontend, hooked before ``launch_server`` runs;
    - every process announces its role through SGLang's ``publish(server_args, role=...)``
      ("scheduler", "detokenizer", "dp_controller", "tokenizer"), which a scheduler or the DP
      controller calls right after ``load_plugins()``, before it builds anything.
    """
    global _registered
    if _registered:
        return
    _registered = True

    from sglang_mint.sglang import backend, hooks

    hooks.register_for("all")
    backend.register_backend()  # the name `--lora-backend mint`
