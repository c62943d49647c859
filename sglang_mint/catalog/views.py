"""Loadable folders of revisions on an engine's disk: what ``Revision.local_path()`` returns.

``views/<content_digest[:2]>/<content_digest>/`` holds hard links to the
revision's blobs under their file names, e.g. for a PEFT revision::

    views/9f/9f2c.../adapter_config.json          -> blob 41ab...
    views/9f/9f2c.../adapter_model.safetensors    -> blob 77c0...
    views/9f/9f2c.../.mint-files.json             {"adapter_config.json": "41ab...", ...}

A view is built in ``views/tmp`` and renamed into place, so a concurrent caller
sees a complete folder or none; identical content shares one folder.

With a remote blob store the links point into the engine's bounded blob cache
(blob_cache.py). When the cache evicts a blob, the view's link still holds its
bytes, so views alone would grow past the bound with a long tail of adapters.
So after the cache has evicted, ``trim_uncached`` removes every view holding a
file the cache no longer has (link count 1) that nobody used for
``keep_recent_s``; the next use builds it again from the store. Disk use is
then the cache's bound plus the views used recently.

A revision's row is data, not a path: anyone who can write a shared catalog's
database could otherwise make every engine link or copy blobs anywhere. So
``path`` first checks the row, before any filesystem call: ``content_digest``
and every blob digest are 64 lowercase hex digits, and every file name is one a
revision holds (upload.ACCEPTED). A bad row raises CorruptRow (HTTP 422) naming
the adapter, e.g. ``adapter 'acme/bot' revision 3: the catalog row is refused:
content_digest '/etc' is not 64 lowercase hex digits``.

A view's mtime is its last use. A hit (shared lock on ``views/.lock``) and a
trim's check-and-remove (exclusive) exclude each other, so a view handed out
is never removed under its caller: either the trim saw it as just used, or the
caller saw it gone and built it again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
import uuid
from typing import Callable

from sglang_mint.catalog.errors import CatalogError
from sglang_mint.catalog.upload import ACCEPTED

VIEW_MANIFEST = ".mint-files.json"
_DIGEST = re.compile(r"[0-9a-f]{64}")


class CorruptRow(CatalogError):
    """A revision row whose digests or file names could not have come from a publish."""

    http_status = 422


def check_row(files: dict[str, str], content_digest: str, where: str) -> None:
    """Refuse a row that is not digests and known file names (see the module doc); touches no file."""
    def refuse(what: str):
        raise CorruptRow(f"{where}: the catalog row is refused: {what} (written by hand or by another tool? "
                         "publish the adapter again)")

    if not isinstance(content_digest, str) or not _DIGEST.fullmatch(content_digest):
        refuse(f"content_digest {content_digest!r} is not 64 lowercase hex digits")
    if not isinstance(files, dict) or not files:
        refuse(f"files {files!r} is not a map of file names to blob digests")
    for name, digest in files.items():
        if name not in ACCEPTED:
            refuse(f"file name {name!r} is not one of {', '.join(ACCEPTED)}")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            refuse(f"the blob digest of {name} ({digest!r}) is not 64 lowercase hex digits")


class ViewFolders:
    def __init__(self, root: str, cache=None, keep_recent_s: float = 60.0):
        self.root = root
        self.cache = cache  # the blob store's BlobCache, for a remote store; None for a local one
        self.keep_recent_s = keep_recent_s
        self._evictions_seen = 0 if cache is None else cache.evicted
        self.trimmed = 0  # views this process removed because the cache had dropped their bytes

    def path(self, files: dict[str, str], content_digest: str, blob_path: Callable[[str], str],
             where: str = "revision") -> str:
        """The view of a revision with ``files`` ({name: digest}), built from ``blob_path(digest)`` if absent.

        ``where`` names the revision in a CorruptRow refusal, e.g. "adapter 'acme/bot' revision 3"."""
        check_row(files, content_digest, where)
        final = os.path.join(self.root, content_digest[:2], content_digest)
        with self._lock(fcntl.LOCK_SH):
            if os.path.isdir(final):
                if self.cache is not None:
                    os.utime(final)  # the last use, which trim_uncached goes by
                return final
        tmp = os.path.join(self.root, "tmp", uuid.uuid4().hex)
        os.makedirs(tmp)
        try:
            for name, digest in files.items():
                src = blob_path(digest)
                try:
                    os.link(src, os.path.join(tmp, name))
                except OSError:
                    shutil.copyfile(src, os.path.join(tmp, name))
            with open(os.path.join(tmp, VIEW_MANIFEST), "w") as f:
                json.dump(files, f, sort_keys=True)
            os.makedirs(os.path.dirname(final), exist_ok=True)
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.isdir(final):
                    raise
        finally:
            if os.path.isdir(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
        if self.cache is not None and self.cache.evicted != self._evictions_seen:
            self._evictions_seen = self.cache.evicted
            self.trim_uncached()
        return final

    def trim_uncached(self) -> int:
        """Remove views holding bytes the blob cache has dropped, unused for ``keep_recent_s``."""
        n, now = 0, time.time()
        for view in self._all():
            try:
                if now - os.stat(view).st_mtime < self.keep_recent_s or not _holds_uncached(view):
                    continue
            except FileNotFoundError:
                continue
            with self._lock(fcntl.LOCK_EX):
                try:
                    if now - os.stat(view).st_mtime < self.keep_recent_s:
                        continue  # used since the first look
                except FileNotFoundError:
                    continue
                self._remove(view)
            n += 1
        self.trimmed += n
        return n

    def gc(self, referenced: Callable[[str], bool]) -> int:
        """Remove views of which any blob is no longer referenced (or whose manifest is unreadable)."""
        n = 0
        for view in self._all():
            try:
                with open(os.path.join(view, VIEW_MANIFEST)) as f:
                    digests = list(json.load(f).values())
            except (OSError, ValueError):
                digests = [None]
            if any(d is None or not referenced(d) for d in digests):
                with self._lock(fcntl.LOCK_EX):
                    self._remove(view)
                n += 1
        return n

    def clean_temp(self, grace_s: float) -> int:
        """Remove what a killed process left in ``views/tmp`` more than ``grace_s`` ago: a view it was
        building, or one it had renamed there to remove. Their links would keep blobs' bytes on disk
        after gc deleted the blobs."""
        tmp, n, now = os.path.join(self.root, "tmp"), 0, time.time()
        try:
            names = os.listdir(tmp)
        except FileNotFoundError:
            return 0
        for name in names:
            folder = os.path.join(tmp, name)
            try:
                if now - os.lstat(folder).st_mtime < grace_s:
                    continue
            except FileNotFoundError:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            n += 1
        return n

    def _all(self):
        try:
            subs = sorted(os.listdir(self.root))
        except FileNotFoundError:
            return
        for sub in subs:
            d = os.path.join(self.root, sub)
            if sub == "tmp" or sub.startswith(".") or not os.path.isdir(d):
                continue
            for name in os.listdir(d):
                yield os.path.join(d, name)

    def _remove(self, view: str) -> None:
        """Rename out of the way first: the view disappears at once, never half."""
        gone = os.path.join(self.root, "tmp", f"gone-{uuid.uuid4().hex}")
        try:
            os.rename(view, gone)
        except FileNotFoundError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    @contextlib.contextmanager
    def _lock(self, mode: int):
        try:
            fd = os.open(os.path.join(self.root, ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:  # a read-only local catalog: nothing is ever trimmed there
            yield
            return
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)


def _holds_uncached(view: str) -> bool:
    """A file whose only link is the view's: the blob cache has evicted its own name."""
    for name in os.listdir(view):
        if name != VIEW_MANIFEST and os.stat(os.path.join(view, name)).st_nlink == 1:
            return True
    return False
