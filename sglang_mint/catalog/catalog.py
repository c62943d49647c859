"""``Catalog``: the rules on top of a metadata store and a blob store.

A catalog folder (created by ``opening.init_catalog`` / ``mint catalog init``)::

    catalog.db            SQLite metadata (sql_store.py)
    blobs/41/41ab...      content-addressed blobs (blobs.py)
    views/9f/9f2c.../     loadable folders, hard links to blobs (local_path)

Typical use by the serving path::

    cat = open_catalog("/data/catalog")
    rev = cat.resolve("acme/support-bot")     # Revision; AdapterNotFound if unknown/deleted
    path = rev.local_path()                   # adapter_config.json + adapter_model.safetensors (or adapter.mintpack)
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from sglang_mint.adapters.base_model import BaseModel
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.folder_form import PACKED, packed_file
from sglang_mint.adapters.peft import CONFIG, WEIGHTS, PeftAdapter, read_peft_folder
from sglang_mint.catalog.errors import (AdapterNotFound, BlobMissing, CatalogError, MintError, RevisionNotFound,
                                        RevisionNotStored)
from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.catalog.metadata import check_metadata
from sglang_mint.catalog.progress import Progress
from sglang_mint.catalog.store import (AdapterRow, BlobStore, MetadataStore, Revision, RevisionRecord,
                                       numbering_conflict)
from sglang_mint.catalog.upload import publish_files
from sglang_mint.catalog.views import ViewFolders

def _sha256(data: bytes | str) -> str:
    """The sha256 hex of bytes, or of a file's bytes read 1 MiB at a time."""
    if not isinstance(data, str):
        return hashlib.sha256(data).hexdigest()
    with open(data, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _size(data: bytes | str) -> int:
    return os.path.getsize(data) if isinstance(data, str) else len(data)


# The content digest of a revision published with durable=false until its blobs are stored
# (Catalog.store_blobs): it names no content, so no other revision's can equal it.
PENDING_DIGEST = ""


def content_digest(files: dict[str, str]) -> str:
    """sha256 over the sorted (file name, blob digest) pairs: the identity of a revision's content."""
    return hashlib.sha256("\n".join(f"{k}:{v}" for k, v in sorted(files.items())).encode()).hexdigest()


@dataclass
class AdapterInfo:
    adapter_id: str
    current: int | None
    latest: int
    deleted: bool
    created: float
    updated: float
    revisions: list[Revision]

    def to_json(self) -> dict:
        return {"adapter_id": self.adapter_id, "current": self.current, "latest": self.latest,
                "deleted": self.deleted, "created": self.created, "updated": self.updated,
                "revisions": [r.to_json() for r in self.revisions]}


@dataclass
class Page:
    items: list[tuple[AdapterRow, Revision | None]]
    next_after: str | None  # pass as ``after`` to get the next page; None on the last page


def number_spans(numbers, most: int = 8) -> str:
    """Revision numbers as runs, for a message that stays short when an RL loop has published
    thousands: ``[1, 2, 3, 5, 7, 8]`` -> ``"1-3, 5, 7-8"``; past ``most`` runs, the first and last
    few and how many: ``"1, 3, 5, 7, ..., 95, 97, 99 (50 revisions)"``."""
    ns = sorted(numbers)
    runs: list[list[int]] = []
    for n in ns:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    if len(text) <= most:
        return ", ".join(text) or "none"
    head = max(1, most // 2)
    tail = max(1, most - head - 1)
    return f"{', '.join(text[:head])}, ..., {', '.join(text[len(text) - tail:])} ({len(ns)} revisions)"


class Catalog:
    """Adapters with immutable revisions. Safe from many threads and processes."""

    def __init__(self, path: str, base: BaseModel, store: MetadataStore, blobs: BlobStore,
                 views: str | None = None, display: str | None = None):
        self.path = path  # what open_catalog was given: a folder or the URL (password included)
        self.display = display or path  # for messages: a URL's password is ***
        self.base = base
        self.store = store
        self.blobs = blobs
        self.views = views or os.path.join(path, "views")
        self.view_folders = ViewFolders(self.views, cache=getattr(blobs, "cache", None))
        self.lookups = 0  # revision lookups (resolve, resolve_revision, get_revision): /mint/status counts them

    def close(self) -> None:
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reads ---------------------------------------------------------------
    def resolve(self, adapter_id: str) -> Revision:
        """The current revision of ``adapter_id``: one indexed lookup (the hot path)."""
        self.lookups += 1
        rev = self.store.resolve(adapter_id)
        if rev is None:
            validate_adapter_id(adapter_id)
            raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")
        rev._catalog = self
        return rev

    def get(self, adapter_id: str) -> AdapterInfo:
        validate_adapter_id(adapter_id)
        a = self.store.get_adapter(adapter_id)
        if a is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")
        revs = self.store.revisions(adapter_id)
        for r in revs:
            r._catalog = self
        return AdapterInfo(a.adapter_id, a.current, a.latest, a.deleted, a.created, a.updated, revs)

    def resolve_revision(self, adapter_id: str, revision: int) -> Revision:
        """Revision ``revision`` of a live adapter (two indexed lookups): what ``acme/bot@3`` serves.

        AdapterNotFound if the adapter is unknown or deleted (its revisions are kept for
        rollback after an undelete, but never served); RevisionNotFound if it has no such revision."""
        self.lookups += 1
        a = self.store.get_adapter(validate_adapter_id(adapter_id))
        if a is None or a.deleted:
            raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog"
                                  + (" (deleted)" if a is not None else ""))
        return self._revision(adapter_id, revision)

    def get_revision(self, adapter_id: str, revision: int) -> Revision:
        self.lookups += 1
        return self._revision(validate_adapter_id(adapter_id), revision)

    def _revision(self, adapter_id: str, revision: int) -> Revision:
        rev = self.store.get_revision(adapter_id, revision)
        if rev is None:
            raise RevisionNotFound(f"adapter {adapter_id!r} has no revision {revision}")
        rev._catalog = self
        return rev

    def list(self, prefix: str = "", after: str | None = None, limit: int = 100,
             include_deleted: bool = False) -> Page:
        """Adapters whose id starts with ``prefix``, in id order, ``limit`` per page (keyset pagination)."""
        if limit <= 0:
            raise CatalogError(f"limit must be positive, got {limit}")
        items = self.store.list_adapters(prefix, after, limit, include_deleted)
        for _, r in items:
            if r is not None:
                r._catalog = self
        return Page(items, items[-1][0].adapter_id if len(items) == limit else None)

    def stats(self) -> dict:
        out = {"path": self.display, "base_model": self.base.name, "base_identity": self.base.identity}
        out.update(self.store.counts())
        return out

    # -- loadable folders ----------------------------------------------------
    def local_path(self, rev: Revision) -> str:
        """A folder the engine can load for ``rev``, made on first use and then reused (views.py):
        hard links to the blobs under their file names (adapter_config.json and
        adapter_model.safetensors for PEFT; adapter_config.json and adapter.mintpack for packed,
        which SGLang reads through sglang_mint.sglang.packed_loader) plus ``.mint-files.json``.
        A record taken before its blobs were stored (durable=false) is read as its row is now."""
        if not rev.durable:
            rev = self.store.get_revision(rev.adapter_id, rev.revision) or rev
            if not rev.durable:
                raise RevisionNotStored(f"revision {rev.revision} of {rev.adapter_id!r} was published with "
                                        "durable=false and its weights are not stored (yet): only the server "
                                        "that received it serves it, from memory")
        return self.view_folders.path(rev.files, rev.content_digest, self.blobs.local_path,
                                      where=f"adapter {rev.adapter_id!r} revision {rev.revision}")

    def read_source(self, rev: Revision) -> str:
        """Where reading ``rev`` now gets its bytes: ``"disk"`` when every blob is on this machine
        (a local store, or the S3 store's disk cache), else ``"s3"``."""
        return "disk" if all(self.blobs.is_local(d) for d in rev.files.values()) else "s3"

    # -- writes --------------------------------------------------------------
    def publish(self, adapter_id: str, folder: str, metadata: dict | None = None,
                expect_revision: int | None = None, pack: bool = False) -> Revision:
        """Import an adapter folder as the next revision of ``adapter_id`` and make it current.

        A PEFT folder (adapter_config.json + adapter_model.safetensors), or a packed one (``mint pack``
        wrote it: adapter.mintpack, without the safetensors), which is stored packed exactly as an
        HTTP upload of its adapter.mintpack is (upload.publish_files; its adapter_config.json is derived
        from the packed file and not read).
        With ``pack=True`` the revision is stored in the packed format
        (``format='packed'``: adapter_config.json + adapter.mintpack, converted
        by sglang_mint.packed after the same checks; needs torch).
        An adapter with PEFT's fused experts (``target_parameters``) is stored packed either way.
        Everything is checked before anything is written; blobs are written and fsynced before the
        write lock and checked again under it, before the revision commits (readers are never
        blocked: WAL). RevisionConflict if this content is already a revision of the adapter, or
        ``expect_revision`` is taken."""
        validate_adapter_id(adapter_id)
        packed = packed_file(folder)  # InvalidAdapter for a folder holding PEFT weights beside it
        if packed is not None:
            return publish_files(self, adapter_id, {PACKED: packed}, metadata=metadata,
                                 expect_revision=expect_revision, where=folder)
        peft = read_peft_folder(folder, self.base)
        if pack:
            return self.publish_packed(adapter_id, peft, metadata, expect_revision, where=folder)
        return self.publish_peft(adapter_id, peft, metadata, expect_revision)

    def publish_peft(self, adapter_id: str, peft: PeftAdapter, metadata: dict | None = None,
                     expect_revision: int | None = None, *, weights_digest: str | None = None,
                     stage=None) -> Revision:
        """``weights_digest``: the sha256 of ``peft.weights_path``, taken while it was received. An adapter
        with PEFT's fused experts is stored packed: SGLang serves that form of them only packed."""
        if peft.fused_experts:
            return self.publish_packed(adapter_id, peft, metadata, expect_revision, where=adapter_id, stage=stage)
        payload = {CONFIG: peft.config_bytes, WEIGHTS: peft.weights_path or peft.weights_bytes}
        known = {WEIGHTS: weights_digest} if weights_digest and peft.weights_path else {}
        return self._publish(adapter_id, "peft", payload, peft.rank, peft.alpha, peft.target_modules, peft.dtype,
                             metadata, expect_revision, loaded=(peft.loaded_bytes, peft.tensor_count),
                             known=known, stage=stage)

    def publish_packed(self, adapter_id: str, peft: PeftAdapter, metadata: dict | None = None,
                       expect_revision: int | None = None, where: str = "<adapter>", stage=None) -> Revision:
        """Convert a checked PEFT adapter to the packed format and publish that.

        The packed rank can exceed the PEFT ``r`` (PEFT's fused MoE gate_up has
        rank 2r, see docs/packed.md); the revision records the packed rank and
        alpha, which are what adapter_config.json of the view says."""
        validate_adapter_id(adapter_id)
        try:
            from sglang_mint.packed.convert import pack_bytes
            from sglang_mint.packed.format import PACKED_FILE, PackedError
        except ImportError as exc:
            raise CatalogError(f"--pack needs torch, which cannot be imported here ({exc})") from None
        try:
            config_bytes, data, mint = pack_bytes(peft.config_bytes, peft.weights(),
                                                  self.base.packed_identity(), where)
        except (PackedError, RuntimeError, ValueError, KeyError) as exc:  # torch shape errors are RuntimeError
            raise InvalidAdapter(f"{where}: cannot convert to the packed format: {exc}") from None
        dtype = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[mint["dtype"]]
        # The packed reader's tensors are views of the file's one buffer (packed/reader.py).
        return self._publish(adapter_id, "packed", {CONFIG: config_bytes, PACKED_FILE: data}, int(mint["rank"]),
                             float(mint["alpha"]), peft.target_modules, dtype, metadata, expect_revision,
                             loaded=(len(data), peft.tensor_count), stage=stage)

    def _publish(self, adapter_id: str, fmt: str, payload: dict, rank: int, alpha: float,
                 target_modules: tuple[str, ...], dtype: str, metadata: dict | None,
                 expect_revision: int | None, loaded: tuple[int, int] = (0, 0), known: dict | None = None,
                 stage=None) -> Revision:
        """``payload`` maps each file name to its bytes, or to the path of a file holding them (an
        upload streamed to disk: hashed and copied from there, never read into memory whole).
        ``loaded``: (bytes, tensors) the adapter holds once loaded (RevisionRecord); ``known``: digests
        already taken ({file name: sha256}).

        ``stage(payload, known) -> staged``: record the revision before its blobs are stored
        (durable=false, frontend/staged_revisions.py): ``stage`` takes the files first, then the record
        is the commit, and ``staged.serve(revision)`` is returned (``staged.discard()`` if the record is
        refused); ``store_blobs`` completes it later. Such a revision is recorded without its
        digests (``files`` empty, ``content_digest`` PENDING_DIGEST): hashing is most of a large
        publish's time (about 110 ms for the 112 MB of a rank-64 adapter of a 2.7 GB Llama, at
        1 GB/s), so ``store_blobs`` takes the digests after the answer. Nor is it refused for
        holding the content of an earlier revision: that check needs the digest."""
        validate_adapter_id(adapter_id)
        check_metadata({} if metadata is None else metadata)  # before anything is written: every reader writes it back
        known = known or {}
        files = {} if stage is not None else {name: known.get(name) or _sha256(data) for name, data in payload.items()}
        record = RevisionRecord(
            format=fmt, rank=rank, alpha=alpha, target_modules=target_modules,
            dtype=dtype, size_bytes=sum(_size(d) for d in payload.values()), files=files,
            content_digest=content_digest(files) if stage is None else PENDING_DIGEST, metadata=dict(metadata or {}),
            loaded_bytes=loaded[0], tensor_count=loaded[1], durable=stage is None)
        # A trainer that lost the compare-and-set is refused before anything is copied or staged.
        row = self.store.get_adapter(adapter_id)
        conflict = numbering_conflict(adapter_id, expect_revision, row.latest if row else 0)
        if conflict is not None:
            raise conflict
        if stage is None:  # else stored after the answer, by store_blobs
            # Copied before the write lock, which every publish of the catalog shares: the copy and its
            # fsync (on S3, the whole upload) hold up no other commit. One that loses the compare-and-set
            # meanwhile leaves blobs gc collects.
            self._put_blobs(files, payload)
        staged = None if stage is None else stage(payload, known)  # then the record is the commit

        def ensure_blobs():
            # Inside the write transaction, after the conflict checks: a blob gc removed since it
            # was copied above is written again (store_blobs does the same).
            if stage is None:
                self._put_blobs(files, payload, touch=False)

        try:
            rev = self.store.publish(adapter_id, record, expect_revision, ensure_blobs)
        except BaseException:
            if staged is not None:
                staged.discard()
            raise
        revision = self.get_revision(adapter_id, rev)
        return revision if staged is None else staged.serve(revision)

    def store_blobs(self, rev: Revision, payload: dict, known: dict | None = None) -> Revision:
        """Complete a revision recorded before its blobs (``stage`` above): hash the files whose digest
        is not ``known``, store them, fsynced, then mark it durable with its digests, in one transaction.
        The copy and its fsync happen outside the write lock (no other commit waits for them), so gc may
        remove a blob before that transaction: e.g. the bytes of a deleted adapter's revision, found
        stored and only touched here, lose their last reference when gc purges it. The transaction
        checks every blob under the lock, as publish's ``ensure_blobs`` does, and writes a missing one again.
        Returns the durable revision; raises RevisionNotFound, writing nothing, if gc collected it first."""
        if self.store.get_revision(rev.adapter_id, rev.revision) is None:
            raise RevisionNotFound(f"revision {rev.revision} of {rev.adapter_id!r} was collected by gc before it was stored")
        files = {name: (known or {}).get(name) or _sha256(data) for name, data in payload.items()}
        self._put_blobs(files, payload)
        self.store.mark_durable(rev.adapter_id, rev.revision, files, content_digest(files),
                                lambda: self._put_blobs(files, payload, touch=False))
        return self.get_revision(rev.adapter_id, rev.revision)

    def _put_blobs(self, files: dict[str, str], payload: dict, touch: bool = True) -> None:
        """Each file's blob ({name: digest}) from its bytes or path in ``payload``. One already stored is
        touched, so that gc's grace keeps an old orphan with these bytes until the commit; under the
        write lock (``touch=False``) gc cannot run before the commit, and an S3 touch is a copy."""
        for name, digest in files.items():
            if self.blobs.exists(digest):
                if touch:
                    self.blobs.touch(digest)
            elif isinstance(payload[name], str):
                self.blobs.put_file(payload[name], digest)
            else:
                self.blobs.put(payload[name])

    def latest_durable(self, adapter_id: str, below: int) -> Revision | None:
        """The highest durable revision of ``adapter_id`` numbered below ``below``, or None."""
        self.lookups += 1
        rev = self.store.latest_durable(adapter_id, below)
        if rev is not None:
            rev._catalog = self
        return rev

    def rollback(self, adapter_id: str, to: int | None = None) -> Revision:
        """Move ``current`` to revision ``to``, or to the stored one before current; atomically.
        A revision published with durable=false and not stored (no blobs: no engine could load it) is
        passed over, and refused when named."""
        validate_adapter_id(adapter_id)

        def pick(a: AdapterRow, numbers: list[int], stored: set[int]) -> int:
            if to is None:
                older = [n for n in numbers if n < (a.current or 0)]
                if not older:
                    raise CatalogError(
                        f"cannot roll back {adapter_id!r} past its first revision (current is {a.current})")
                if not stored.intersection(older):
                    raise CatalogError(f"cannot roll back {adapter_id!r}: no revision before {a.current} is "
                                           f"stored (revisions {number_spans(older)} were published with "
                                           "durable=false)")
                return max(stored.intersection(older))
            if to not in numbers:
                raise RevisionNotFound(f"adapter {adapter_id!r} has no revision {to} (it has {number_spans(numbers)})")
            if to == a.current:
                raise CatalogError(f"revision {to} of {adapter_id!r} is already current")
            if to not in stored:
                raise CatalogError(f"revision {to} of {adapter_id!r} is not stored (published with durable=false, "
                                   f"its blobs were never stored): its stored revisions are {number_spans(stored)}")
            return to

        return self.get_revision(adapter_id, self.store.set_current(adapter_id, pick))

    def delete(self, adapter_id: str) -> None:
        """Mark the adapter gone (resolve answers AdapterNotFound). Its revisions and
        blobs are reclaimed by ``gc``; publishing the id again continues its numbering."""
        validate_adapter_id(adapter_id)
        self.store.delete(adapter_id)

    # -- maintenance ---------------------------------------------------------
    def gc(self, grace_s: float = 3600.0) -> dict:
        """Drop deleted adapters' revisions, then views and blobs nothing references (maintenance.py)."""
        from sglang_mint.catalog.maintenance import collect_garbage

        return collect_garbage(self, grace_s)

    def verify(self, rehash: bool = True) -> dict:
        """Check the metadata, reference counts and every referenced blob (maintenance.py)."""
        from sglang_mint.catalog.maintenance import verify_catalog

        return verify_catalog(self, rehash)

    # -- bulk ------------------------------------------------------------------
    def import_folders(self, folders: list[str], namespace: str = "", metadata: dict | None = None,
                       progress: bool = True, pack: bool = False) -> list[Revision]:
        """Publish many PEFT folders (packed with ``pack=True``); the id is ``namespace/<folder name>``.

        Stops at the first bad folder with an error naming it; the folders
        before it stay imported (the message says how many)."""
        out = []
        bar = Progress(len(folders), "import", enabled=progress)
        try:
            for folder in folders:
                name = os.path.basename(os.path.normpath(folder))
                adapter_id = f"{namespace.rstrip('/')}/{name}" if namespace else name
                try:
                    out.append(self.publish(adapter_id, folder, metadata, pack=pack))
                except MintError as exc:
                    raise type(exc)(f"{exc} [imported {len(out)} of {len(folders)} folders before this one]") from None
                bar.update(1)
        finally:
            bar.close()
        return out


__all__ = ["AdapterInfo", "BlobMissing", "Catalog", "Page"]
