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

    from sglang_mint.sglang import backend, cpu_compat, flags, frontend, openai_model, packed_loader, residency

    flags.register_hooks()  # --enable-mint and --mint-* flags, carried to every process
    cpu_compat.register_hooks()  # pinned memory without CUDA
    backend.register_backend()  # --lora-backend mint and its MoE hooks
    openai_model.register_hooks()  # adapter id in the OpenAI `model` field
    frontend.register_hooks()  # catalog lookups in the tokenizer manager, /mint/* endpoints
    residency.register_hooks()  # background cold loads and the host LRU in the scheduler
    packed_loader.register_hooks()  # adapters in the packed format
