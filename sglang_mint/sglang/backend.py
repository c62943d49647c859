"""The LoRA backend name ``mint`` (``--lora-backend mint``).

Until sglang-mint's own kernels are wired in, ``mint`` runs SGLang's
``csgmv`` kernels on a GPU and its ``torch_native`` path on CPU, under its own
name, so that launch scripts can already name it.
"""

from __future__ import annotations

from sglang.srt.lora.backend.lora_registry import register_lora_backend

MINT_BACKEND = "mint"


def register_backend() -> None:
    register_lora_backend(MINT_BACKEND)(create_mint_backend)


def create_mint_backend():
    import torch

    if torch.cuda.is_available():
        from sglang.srt.lora.backend.chunked_backend import ChunkedSgmvLoRABackend as Base
    else:
        from sglang.srt.lora.backend.torch_backend import TorchNativeLoRABackend as Base

    return type("MintLoRABackend", (Base,), {"name": MINT_BACKEND, "__module__": __name__})
