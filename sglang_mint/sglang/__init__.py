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
    """Declare every hook of the plugin. Idempotent: a second call does nothing."""
    global _registered
    if _registered:
        return
    _registered = True

    from sglang_mint.sglang import backend, hooks

    # Every hook target is imported when hooks are applied, so each process hooks only what
    # runs in it: the detokenizer would otherwise import the HTTP server and the scheduler
    # (about 5 s of imports per process on a 2-core machine). The list is hooks.HOOKS.
    hooks.register_for(process_role())
    backend.register_backend()  # the name `--lora-backend mint`


def process_role() -> str:
    """The SGLang process calling ``register()``: "scheduler", "detokenizer" or "frontend".

    SGLang calls ``load_plugins()`` first thing in ``run_scheduler_process`` and
    ``run_detokenizer_process``; every other caller (the launcher with its
    tokenizer manager, ``sglang.Engine``'s process, the DP controller) is the frontend.
    """
    import sys

    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_name
        if name == "run_scheduler_process":
            return "scheduler"
        if name == "run_detokenizer_process":
            return "detokenizer"
        frame = frame.f_back
    return "frontend"
