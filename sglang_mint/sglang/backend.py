"""The LoRA backend name ``mint`` (``--lora-backend mint``) in SGLang's backend registry.

The class, ``mint_backend.py:MintLoRABackend``, is imported only when a server asks for it.
"""

from __future__ import annotations

from sglang.srt.lora.backend.lora_registry import register_lora_backend

MINT_BACKEND = "mint"


def register_backend() -> None:
    register_lora_backend(MINT_BACKEND)(create_mint_backend)


def create_mint_backend():
    from sglang_mint.sglang.mint_backend import MintLoRABackend

    return MintLoRABackend
