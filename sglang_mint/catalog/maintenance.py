"""``mint catalog gc`` and ``mint catalog verify``: the catalog's garbage, and its consistency."""

from __future__ import annotations

import hashlib
import os
import time
from typing import TYPE_CHECKING

from sglang_mint.catalog.blobs import LocalBlobStore

if TYPE_CHECKING:
    from sglang_mint.catalog.catalog import Catalog


def collect_garbage(catalog: "Catalog", grace_s: float) -> dict:
    """Drop deleted adapters' revisions and the durable=false revisions that a newer one superseded
    before they were stored, then views and blobs nothing references.

    A blob file unknown to the metadata (left by a publish killed before
    its commit) is removed only when older than ``grace_s``; a publish in
    flight re-checks its blobs under the write lock, so gc cannot strand it.
    A superseded durable=false revision goes once older than ``grace_s``: a server serves it
    from memory for seconds after it is superseded, and stores such a revision within a
    minute if it stores it at all (frontend/staged_revisions.py); a store that comes later
    finds no row and writes nothing (one that gc overtakes mid-store leaves an unreferenced
    blob for the next gc)."""
    purged = catalog.store.purge_deleted()
    never_stored = catalog.store.purge_never_stored(time.time() - grace_s)
    views = catalog.view_folders.gc(lambda digest: bool(catalog.store.blob_refs(digest)))
    removed = freed = 0
    by_prefix: dict[str, list[str]] = {}
    for digest in catalog.blobs.iter_digests():
        by_prefix.setdefault(digest[:2], []).append(digest)
    for prefix, digests in sorted(by_prefix.items()):
        with catalog.store.write_lock():  # no publish commits while we decide
            for digest in digests:
                refs = catalog.store.blob_refs(digest)
                if refs is not None and refs > 0:
                    continue
                if refs is None and catalog.blobs.age_s(digest) < grace_s:
                    continue
                size = catalog.blobs.size(digest)
                catalog.blobs.delete(digest)
                catalog.store.forget_blob(digest)
                removed, freed = removed + 1, freed + size
    with catalog.store.write_lock():  # rows for blobs whose files were already gone
        for digest, refs in list(catalog.store.referenced_digests()):
            if refs <= 0:
                catalog.store.forget_blob(digest)
    temp = catalog.blobs.clean_temp(grace_s) + catalog.view_folders.clean_temp(grace_s)
    return {"purged_revisions": purged, "purged_never_stored": len(never_stored),
            "removed_views": views, "removed_blobs": removed,
            "freed_bytes": freed, "removed_temp_files": temp}


def verify_catalog(catalog: "Catalog", rehash: bool) -> dict:
    """Check the metadata, reference counts and every referenced blob (re-hashed unless ``rehash``
    is False). ``problems`` empty means consistent; ``unreferenced_blobs`` and ``temp_files`` are
    garbage for gc, not errors. A revision published with durable=false that is not stored yet
    (or never will be: the server stopped first) has no blobs or digests recorded and is listed
    in ``not_durable``, not a problem: such a revision is never served from the catalog."""
    store, blobs = catalog.store, catalog.blobs
    problems = list(store.check())
    known = dict(store.referenced_digests())
    for digest, n in store.recount_refs().items():
        if known.get(digest) != n:
            problems.append(f"blob {digest}: {n} revisions reference it, the refcount says {known.get(digest)}")
    pending = store.not_durable()
    waiting = {d for _, _, files in pending for d in files.values()}
    checked = 0
    for digest, refs in known.items():
        if refs <= 0:
            continue
        checked += 1
        if not blobs.exists(digest):
            if digest not in waiting:
                problems.append(f"blob {digest} is referenced by {refs} revision(s) but missing")
        elif rehash and hashlib.sha256(blobs.read(digest)).hexdigest() != digest:
            problems.append(f"blob {digest} is corrupt: its bytes hash to something else")
    on_disk = sum(1 for d in blobs.iter_digests() if known.get(d, 0) <= 0)
    temp = len(os.listdir(blobs.tmp)) if isinstance(blobs, LocalBlobStore) else 0
    return {"ok": not problems, "problems": problems, "checked_blobs": checked,
            "unreferenced_blobs": on_disk, "temp_files": temp,
            "not_durable": [f"{aid}@{rev}" for aid, rev, _ in pending]}
