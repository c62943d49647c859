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

    from sglang_mint.sglang import (backend, cpu_compat, flags, frontend, moe_cpu, openai_model, packed_loader,
                                    residency)

    # Every hook target is imported when hooks are applied, so each process hooks only what
    # runs in it: the detokenizer would otherwise import the HTTP server and the scheduler
    # (about 5 s of imports per process on a 2-core machine).
    role = process_role()
    flags.register_hooks()  # --enable-mint and --mint-* flags, carried to every process
    cpu_compat.register_hooks()  # pinned memory without CUDA
    backend.register_backend()  # the name `--lora-backend mint`
    if role == "frontend":
        openai_model.register_hooks()  # adapter id in the OpenAI `model` field
        frontend.register_hooks()  # catalog lookups in the tokenizer manager, /mint/* endpoints
    if role == "scheduler":
        moe_cpu.register_hooks()  # MoE-expert LoRA without CUDA: the 4 gaps of SGLang's CPU MoE path
        backend.register_hooks()  # MoE expert LoRA of the mint backend
        residency.register_hooks()  # background cold loads and the host LRU
        packed_loader.register_hooks()  # adapters in the packed format


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
