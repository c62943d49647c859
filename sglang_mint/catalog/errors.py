"""Catalog errors. Each message names the adapter, file or revision at fault.

An adapter that fails its checks is an adapters.errors.InvalidAdapter (or BaseModelMismatch).
"""

from sglang_mint.errors import AdapterNotFound, InvalidAdapterId, MintError

__all__ = [
    "AdapterNotFound",
    "BlobMissing",
    "BlobStoreUnavailable",
    "CatalogError",
    "InvalidAdapterId",
    "InvalidMetadata",
    "MintError",
    "NotACatalog",
    "RevisionConflict",
    "RevisionNotFound",
    "RevisionNotStored",
]


class CatalogError(MintError):
    """A catalog operation that cannot be done in the catalog's current state."""

    http_status = 409


class InvalidMetadata(CatalogError):
    """A revision's metadata that is not plain JSON (catalog/metadata.py names the value)."""

    http_status = 400


class NotACatalog(CatalogError):
    """The folder given is missing, or holds no catalog.db written by ``mint catalog init``."""

    http_status = 500


class RevisionConflict(CatalogError):
    """Publishing a revision that already exists (same number or same content)."""


class RevisionNotFound(AdapterNotFound):
    """A named revision that the adapter does not have."""


class RevisionNotStored(CatalogError):
    """A revision published with durable=false whose blobs are not stored (yet): only the server
    that received it serves it, from memory."""


class BlobMissing(CatalogError):
    """A revision's blob is absent from the blob store (found by verify or materialise)."""

    http_status = 500


class BlobStoreUnavailable(CatalogError):
    """The remote blob store cannot be used: endpoint unreachable, bucket missing, no or bad
    credentials. The message names the store URL and endpoint (never a secret) and the problem,
    e.g. ``s3://adapters/prod (endpoint http://10.0.0.5:9000): cannot connect``."""

    http_status = 503
