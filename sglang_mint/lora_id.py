"""The LoRA id a catalog revision travels under, from the frontend to the scheduler.

The frontend resolves a request's adapter once (a ``RevisionName``) and registers
revision ``acme/bot@3`` in SGLang's LoRA registry under ``lora_id = "mint:acme/bot@3"``.
That id is a ``CatalogLoraId``: a ``str`` (SGLang keys its dicts by it and
sends it to the schedulers in the request) that also carries the resolved
``Revision`` record, so the scheduler and its load workers never ask the
catalog again. It pickles with its record; a plain ``"mint:..."`` string (a
request from before a restart, a test) parses to the same names.

SGLang's own adapters have 32-hex uuid ids, so the prefix never collides.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sglang_mint.catalog.ids import parse_revision_name, revision_name

if TYPE_CHECKING:
    from sglang_mint.catalog.store import Revision

PREFIX = "mint:"


class RevisionName(str):
    """``"acme/bot@3"``, the name SGLang's registry keeps revision 3 under, with ``.revision``,
    its record: the frontend resolves a request's adapter once and passes this along."""

    __slots__ = ("revision",)

    def __new__(cls, revision: "Revision"):
        self = super().__new__(cls, revision_name(revision.adapter_id, revision.revision))
        self.revision = revision
        return self

    def __reduce__(self):
        return RevisionName, (self.revision,)


class CatalogLoraId(str):
    """``"mint:acme/bot@3"`` with ``.revision``, the catalog's record of acme/bot revision 3."""

    __slots__ = ("revision",)

    def __new__(cls, revision: "Revision"):
        self = super().__new__(cls, PREFIX + revision_name(revision.adapter_id, revision.revision))
        self.revision = revision
        return self

    def __reduce__(self):
        return CatalogLoraId, (self.revision,)


def is_catalog_lora_id(lora_id) -> bool:
    return isinstance(lora_id, str) and lora_id.startswith(PREFIX)


def parse_lora_id(lora_id: str) -> tuple[str, int]:
    """``"mint:acme/bot@3"`` -> ``("acme/bot", 3)``."""
    if isinstance(lora_id, CatalogLoraId):
        return lora_id.revision.adapter_id, lora_id.revision.revision
    return parse_revision_name(lora_id[len(PREFIX):])


def lora_name_of(lora_id: str) -> str:
    """``"mint:acme/bot@3"`` -> ``"acme/bot@3"``, the name SGLang's registry keeps it under."""
    return lora_id[len(PREFIX):]
