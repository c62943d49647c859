"""The LoRA backend name ``mint`` (``--lora-backend mint``).

``register_backend`` puts ``mint`` into SGLang's backend registry (the class,
``MintLoRABackend`` in ``mint_backend.py``, is imported only when a server
asks for it); two hooks (``hooks.py``) route MoE expert LoRA of a ``mint``
backend to our kernel (``mint_moe.py``). Both run sglang-mint's
kernels through ``sglang_mint.kernels.dispatch``: Triton on CUDA or under
``TRITON_INTERPRET=1``, the torch ``_ref`` path otherwise (CPU).
"""

from __future__ import annotations

from sglang.srt.lora.backend.lora_registry import register_lora_backend

MINT_BACKEND = "mint"


def register_backend() -> None:
    register_lora_backend(MINT_BACKEND)(create_mint_backend)


def create_mint_backend():
    from sglang_mint.sglang.mint_backend import MintLoRABackend

    return MintLoRABackend
