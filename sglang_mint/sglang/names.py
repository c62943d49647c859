"""The LoRA id SGLang carries for a catalog revision.

The tokenizer manager registers revision ``acme/bot@3`` (its LoRA name, see
``catalog.ids.revision_name``) under ``lora_id = "mint:acme/bot@3"``; that id
travels with the request to the scheduler, which loads the revision it names.
SGLang's own adapters have 32-hex uuid ids, so the prefix never collides.
"""

from __future__ import annotations

from sglang_mint.catalog.ids import parse_revision_name, revision_name

MINT_ID_PREFIX = "mint:"


def mint_lora_id(adapter_id: str, revision: int) -> str:
    return MINT_ID_PREFIX + revision_name(adapter_id, revision)


def mint_lora_id_of(lora_name: str) -> str:
    """``"acme/bot@3"`` -> ``"mint:acme/bot@3"``."""
    return MINT_ID_PREFIX + lora_name


def parse_mint_lora_id(lora_id: str) -> tuple[str, int]:
    """``"mint:acme/bot@3"`` -> ``("acme/bot", 3)``."""
    return parse_revision_name(lora_id[len(MINT_ID_PREFIX):])


def is_mint_lora_id(lora_id) -> bool:
    return isinstance(lora_id, str) and lora_id.startswith(MINT_ID_PREFIX)
