"""The adapter catalog: ids, immutable revisions, publish/rollback, resolve.

Engine-agnostic: never imports sglang, and works without torch. See docs/catalog.md.
"""

from sglang_mint.catalog.catalog import AdapterInfo, Catalog, Page
from sglang_mint.catalog.opening import init_catalog, open_catalog
from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.catalog.store import Revision

__all__ = ["AdapterInfo", "Catalog", "Page", "Revision", "init_catalog", "open_catalog", "validate_adapter_id"]
