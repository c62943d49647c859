"""The backend-neutral interface: what a metadata store and a blob store must do.

``Catalog`` (catalog.py) holds the rules (id validation, import checks, which
revision rollback picks) and talks to storage only through these two classes.
The embedded default is ``SqliteMetadataStore`` + ``LocalBlobStore``; a later
PostgreSQL + S3 pair implements the same methods and callers do not change.

Atomicity contract, which every backend keeps:

- a blob is durable (fsynced) before any revision referencing it commits;
- ``publish`` inserts the revision, its blob references and moves ``current``
  in ONE transaction, so a reader sees the old revision or the new one, never
  a revision without its blobs or a ``current`` pointing at nothing;
- ``resolve`` is one indexed lookup returning the current revision's row;
- blob references live in the metadata store, so gc deletes a blob only after
  checking, under the metadata write lock, that nothing references it.
"""

from __future__ import annotations

import abc
import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from sglang_mint.catalog.errors import RevisionConflict


@dataclass(frozen=True)
class RevisionRecord:
    """What a revision stores. ``files`` maps a file name in the loadable folder
    to its blob digest, e.g. ``{"adapter_config.json": "9f2c...",
    "adapter_model.safetensors": "41ab..."}``; ``content_digest`` is the sha256
    of those pairs and identifies the revision's content."""

    format: str  # "peft" or "packed"
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    dtype: str  # "float16", "bfloat16", "float32"
    size_bytes: int
    files: dict[str, str]
    content_digest: str
    metadata: dict[str, Any] = field(default_factory=dict)
    # What the adapter holds once loaded, ranks padded to one (adapters/uniform_rank.py): the bytes of its
    # tensors and how many there are. The host budget charges this before a read; 0 = not recorded.
    loaded_bytes: int = 0
    tensor_count: int = 0
    # False: recorded before its blobs were stored (a publish with durable=false, see
    # frontend/staged_revisions.py); set once they are. Such a revision is served only by the
    # engine that holds its bytes in memory.
    durable: bool = True


@dataclass(frozen=True)
class AdapterRow:
    adapter_id: str
    current: int | None  # None only transiently; a live adapter always has one
    latest: int  # highest revision number ever given: numbers are never reused
    deleted: bool
    created: float
    updated: float


class Revision:
    """One immutable revision as read back: what ``Catalog.resolve`` returns.

    Plain attributes: ``adapter_id``, ``revision`` (int, from 1), ``format``
    ("peft" or "packed"), ``rank``, ``alpha``, ``target_modules`` (tuple),
    ``dtype``, ``size_bytes``, ``created`` (unix seconds), ``content_digest``,
    ``loaded_bytes``, ``tensor_count`` and ``durable`` (see RevisionRecord); ``staged``, the
    folder in shared memory holding its files while they are being stored (None once read back
    from the catalog, see frontend/staged_revisions.py); parsed on first use:
    ``files`` ({name: blob digest}) and ``metadata``. ``local_path()`` returns a
    folder the engine can load (see Catalog.local_path). It pickles without its
    catalog: the record travels with a request to the scheduler (sglang_mint/lora_id.py).
    """

    __slots__ = (
        "adapter_id", "revision", "format", "rank", "alpha", "target_modules", "dtype",
        "size_bytes", "created", "content_digest", "_files", "_metadata", "_catalog",
        "loaded_bytes", "tensor_count", "durable", "staged",
    )

    def __init__(self, adapter_id, revision, created, fmt, rank, alpha, targets, dtype,
                 size_bytes, files_json, content_digest, metadata_json, loaded_bytes=0, tensor_count=0,
                 durable=True, staged=None, *, catalog=None):
        self.adapter_id = adapter_id
        self.revision = revision
        self.created = created
        self.format = fmt
        self.rank = rank
        self.alpha = alpha
        self.target_modules = tuple(targets.split(",")) if targets else ()
        self.dtype = dtype
        self.size_bytes = size_bytes
        self._files = files_json
        self.content_digest = content_digest
        self._metadata = metadata_json
        self._catalog = catalog
        self.loaded_bytes = loaded_bytes or 0
        self.tensor_count = tensor_count or 0
        self.durable = bool(durable)
        self.staged = staged

    def __reduce__(self):
        return Revision, (self.adapter_id, self.revision, self.created, self.format, self.rank, self.alpha,
                          ",".join(self.target_modules), self.dtype, self.size_bytes, self._files,
                          self.content_digest, self._metadata, self.loaded_bytes, self.tensor_count,
                          self.durable, self.staged)

    @property
    def files(self) -> dict[str, str]:
        if isinstance(self._files, str):
            self._files = json.loads(self._files)
        return self._files

    @property
    def metadata(self) -> dict[str, Any]:
        if isinstance(self._metadata, str):
            self._metadata = json.loads(self._metadata)
        return self._metadata

    def local_path(self) -> str:
        """A local folder holding this revision's files, materialised on first use."""
        if self._catalog is None:
            raise RuntimeError("this Revision is not bound to an open catalog")
        return self._catalog.local_path(self)

    def to_json(self) -> dict[str, Any]:
        return {
            "adapter_id": self.adapter_id, "revision": self.revision, "format": self.format,
            "rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules),
            "dtype": self.dtype, "size_bytes": self.size_bytes, "created": self.created,
            "content_digest": self.content_digest, "files": self.files, "metadata": self.metadata,
            "loaded_bytes": self.loaded_bytes, "tensor_count": self.tensor_count, "durable": self.durable,
        }

    def __eq__(self, other):
        return isinstance(other, Revision) and (self.adapter_id, self.revision, self.content_digest) == (
            other.adapter_id, other.revision, other.content_digest)

    def __hash__(self):
        return hash((self.adapter_id, self.revision))

    def __repr__(self):
        return f"Revision({self.adapter_id!r}, {self.revision}, {self.format}, rank={self.rank}, {self.dtype})"


def numbering_conflict(adapter_id: str, expect_revision: int | None, latest: int) -> RevisionConflict | None:
    """Why a publish asking to be revision ``expect_revision`` is refused when the adapter's highest
    revision is ``latest`` (0: none yet); None when it is the next one, or when it asks for none."""
    if expect_revision is None or expect_revision == latest + 1:
        return None
    if expect_revision <= latest:
        return RevisionConflict(f"revision {expect_revision} of {adapter_id!r} already exists (latest is {latest}); "
                                "revisions are immutable, publish a new one")
    return RevisionConflict(f"cannot publish revision {expect_revision} of {adapter_id!r}: the next revision is "
                            f"{latest + 1}")


class MetadataStore(abc.ABC):
    """Adapters, revisions, blob references and catalog-wide settings."""

    @abc.abstractmethod
    def get_setting(self, key: str) -> str | None: ...

    @abc.abstractmethod
    def replace_setting(self, key: str, old: str, new: str) -> bool:
        """Set ``key`` to ``new`` if it still holds ``old``, atomically; False if it does not."""

    @abc.abstractmethod
    def resolve(self, adapter_id: str) -> Revision | None:
        """The current revision of a live adapter, or None. One indexed lookup,
        safe from many threads and processes."""

    @abc.abstractmethod
    def get_adapter(self, adapter_id: str) -> AdapterRow | None: ...

    @abc.abstractmethod
    def latest_durable(self, adapter_id: str, below: int) -> Revision | None:
        """The highest revision numbered below ``below`` whose blobs are stored, or None."""

    @abc.abstractmethod
    def not_durable(self) -> list[tuple[str, int, dict]]:
        """(adapter id, revision, files) of every revision whose blobs are not stored yet."""

    @abc.abstractmethod
    def mark_durable(self, adapter_id: str, revision: int, files: dict[str, str], content_digest: str,
                     ensure_blobs) -> None:
        """Record that the blobs of a revision published with durable=false are now stored, with
        their digests ({file name: sha256}) and the revision's content digest, in one transaction.
        ``ensure_blobs()`` is called in it, under the write lock and before the commit, as in
        ``publish``: it re-checks the blobs (and writes any gc removed since they were stored)."""

    @abc.abstractmethod
    def get_revision(self, adapter_id: str, revision: int) -> Revision | None: ...

    @abc.abstractmethod
    def revisions(self, adapter_id: str) -> list[Revision]:
        """All revisions of one adapter, oldest first."""

    @abc.abstractmethod
    def list_adapters(
        self, prefix: str, after: str | None, limit: int, include_deleted: bool
    ) -> list[tuple[AdapterRow, Revision | None]]:
        """Adapters whose id starts with ``prefix`` and sorts after ``after``, in id order."""

    @abc.abstractmethod
    def publish(
        self, adapter_id: str, record: RevisionRecord, expect_revision: int | None, ensure_blobs
    ) -> int:
        """Add a revision and make it current, atomically; return its number.

        Raises RevisionConflict when ``expect_revision`` is given and is not the
        next number (``numbering_conflict``), or when a revision with the same
        content_digest exists. ``ensure_blobs()`` is called inside the write
        transaction, after the checks and before the commit: it re-checks the
        blobs the caller wrote before taking the lock, writing again one gc
        removed meanwhile, so the revision commits with every blob in place.
        """

    @abc.abstractmethod
    def publish_many(self, items: Iterable[tuple[str, RevisionRecord]], created: float) -> int:
        """Bulk insert of NEW adapters at revision 1 in one transaction (synth, bulk import)."""

    @abc.abstractmethod
    def set_current(self, adapter_id: str, pick) -> int:
        """Move ``current`` atomically. ``pick(adapter_row, revision_numbers, stored) -> int`` (``stored``:
        the set of those that are durable) chooses the target inside the write transaction (and raises
        to refuse)."""

    @abc.abstractmethod
    def delete(self, adapter_id: str) -> None: ...

    @abc.abstractmethod
    def purge_deleted(self) -> int:
        """Drop revisions (and blob references) of deleted adapters; keep a tombstone
        so revision numbers are never reused if the id is published again."""

    @abc.abstractmethod
    def purge_never_stored(self, created_before: float) -> list[tuple[str, int]]:
        """Drop revisions published with durable=false whose blobs were never stored and never will
        be: created before ``created_before``, superseded by a newer revision of their adapter and
        not its current one (an RL loop's past steps). Returns their (adapter id, revision)."""

    @abc.abstractmethod
    def blob_refs(self, digest: str) -> int | None:
        """How many revisions reference ``digest`` (None: the store never heard of it)."""

    @abc.abstractmethod
    def referenced_digests(self) -> Iterator[tuple[str, int]]:
        """(digest, reference count) of every blob the store knows, in digest order."""

    @abc.abstractmethod
    def forget_blob(self, digest: str) -> None:
        """Drop an unreferenced blob's row (gc, under write_lock, after deleting the file)."""

    @abc.abstractmethod
    def recount_refs(self) -> dict[str, int]:
        """Reference counts recomputed from the revisions (verify compares them)."""

    @abc.abstractmethod
    def write_lock(self):
        """Context manager holding the metadata write lock (gc runs under it)."""

    @abc.abstractmethod
    def check(self) -> list[str]:
        """Problems in the metadata itself (integrity check, dangling pointers)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]: ...

    @abc.abstractmethod
    def close(self) -> None: ...


class BlobStore(abc.ABC):
    """Immutable, content-addressed blobs: name = sha256 hex of the bytes."""

    @abc.abstractmethod
    def put(self, data: bytes, sync: bool = True) -> str:
        """Store ``data`` (no-op if present), return its digest. With ``sync``
        the blob is durable on return; without it, call ``sync()`` before
        committing metadata that references it."""

    @abc.abstractmethod
    def put_file(self, path: str, digest: str, sync: bool = True) -> str:
        """``put`` for bytes in a file (an upload streamed to disk), copied without holding them in
        memory. ``digest`` is the file's sha256, which the caller has just computed from it."""

    @abc.abstractmethod
    def sync(self) -> None: ...

    @abc.abstractmethod
    def exists(self, digest: str) -> bool: ...

    def is_local(self, digest: str) -> bool:
        """Whether ``local_path(digest)`` reads this machine's disk without a download."""
        return True

    @abc.abstractmethod
    def touch(self, digest: str) -> None:
        """Mark a blob as just used so gc's grace period protects it."""

    @abc.abstractmethod
    def read(self, digest: str) -> bytes: ...

    @abc.abstractmethod
    def local_path(self, digest: str) -> str:
        """A local file holding the blob (for a remote store: a cached download)."""

    @abc.abstractmethod
    def iter_digests(self) -> Iterator[str]: ...

    def size(self, digest: str) -> int:
        """The blob's length in bytes (gc reports what it freed); a remote store overrides
        this with a metadata request instead of a read."""
        return len(self.read(digest))

    @abc.abstractmethod
    def age_s(self, digest: str) -> float: ...

    @abc.abstractmethod
    def delete(self, digest: str) -> None: ...

    @abc.abstractmethod
    def clean_temp(self, grace_s: float) -> int:
        """Remove partial writes left by a crash, older than ``grace_s``."""
