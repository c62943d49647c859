"""The adapter catalog: ids, immutable revisions, publish/rollback, resolve.

Engine-agnostic: never imports sglang, and works without torch.
"""

from sglang_mint.catalog.ids import validate_adapter_id

__all__ = ["validate_adapter_id"]
