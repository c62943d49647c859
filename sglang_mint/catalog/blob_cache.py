"""A bounded cache of blob files on local disk, shared by the threads and processes of one engine.

A remote blob store (s3_blobs.py) downloads each blob here once; the catalog then
hard-links it into a view folder the engine loads. Layout under ``root``::

    41/41ab...e9     a verified blob, read-only (0o444), named like the catalog's blobs/
    tmp/             downloads in progress: ``41ab...e9.<pid>.<ns>``
    locks/41.fetch   held while a blob of stripe ``41`` is downloaded (one download per blob)
    locks/41.use     held shared by a hit for microseconds, exclusive by eviction

Locks are ``flock`` on 256 stripe files (first two hex digits), so they work between
threads (each call opens its own descriptor) and processes, and never accumulate.

Recency is the file's mtime, set on every hit (atime is unreliable: noatime, relatime).
When the bytes this process knows of pass ``max_bytes``, it rescans the folder (which also
counts other processes' downloads) and removes the least recently used files until 90 % of
``max_bytes`` is left, e.g. ``max_bytes`` 10 GiB: one scan per ~1 GiB downloaded.

Two rules keep eviction safe for callers:

- a file touched less than ``keep_recent_s`` ago is never evicted, because the caller of
  ``fetch`` uses the path after it returns (``os.link`` into a view). A burst of new blobs
  can therefore hold the cache above ``max_bytes`` for up to ``keep_recent_s``;
- eviction re-checks the mtime under the exclusive use-lock, so a hit that touched the
  file a moment ago (under the shared lock) keeps it.

A view's hard link (views.py) keeps a blob's bytes on disk after the cache evicts its own
name; ``evicted`` tells the views to drop those they hold and nobody used recently, so disk
use stays near ``max_bytes`` plus the views in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import threading
import time
from typing import Callable, Iterable

from sglang_mint.catalog.errors import BlobMissing

DIGEST = re.compile(r"[0-9a-f]{64}")
LOW_WATER = 0.9  # eviction stops when 90 % of max_bytes is left
STALE_TMP_S = 3600.0  # a download unfinished for an hour was left by a dead process


def check_digest(digest: str) -> str:
    """Refuse anything but 64 lowercase hex digits: a digest becomes a file name and an object key."""
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise BlobMissing(f"{digest!r} is not a blob digest (64 lowercase hex digits)")
    return digest


class BlobCache:
    def __init__(self, root: str, max_bytes: int, keep_recent_s: float = 60.0):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.root = root
        self.max_bytes = max_bytes
        self.keep_recent_s = keep_recent_s
        self.tmp = os.path.join(root, "tmp")
        self.locks = os.path.join(root, "locks")
        os.makedirs(self.tmp, exist_ok=True)
        os.makedirs(self.locks, exist_ok=True)
        self._mutex = threading.Lock()
        self._sizes: dict[str, int] = {}  # what this process believes is cached
        self._total = 0
        self._limit = max_bytes  # rescan when _total passes this (raised while all files are recent)
        self.evicted = 0  # files this process removed, for tests and /mint/status
        self._rescan()

    def path(self, digest: str) -> str:
        return os.path.join(self.root, digest[:2], digest)

    def get(self, digest: str) -> str | None:
        """The cached file, marked as just used; None if it is not cached."""
        p = self.path(check_digest(digest))
        with self._lock(digest, "use", fcntl.LOCK_SH):
            try:
                os.utime(p)
                return p
            except FileNotFoundError:
                return None
            except PermissionError:  # another user's file: still usable, recency not updated
                return p if os.path.exists(p) else None

    def fetch(self, digest: str, chunks: Callable[[], Iterable[bytes]], where: str) -> str:
        """The cached file for ``digest``, downloaded with ``chunks()`` if it is missing.

        At most one caller per stripe downloads at a time; the others wait and then find
        the file. The bytes are hashed while written: a mismatch raises BlobMissing and
        leaves nothing behind (``where`` names the source in the message)."""
        hit = self.get(digest)
        if hit is not None:
            return hit
        with self._lock(digest, "fetch", fcntl.LOCK_EX):
            hit = self.get(digest)  # another thread or process fetched it while we waited
            if hit is not None:
                return hit
            size = self._download(digest, chunks, where)
        self._added(digest, size)
        return self.path(digest)

    def _download(self, digest: str, chunks: Callable[[], Iterable[bytes]], where: str) -> int:
        tmp = os.path.join(self.tmp, f"{digest}.{os.getpid()}.{time.monotonic_ns()}")
        h, size = hashlib.sha256(), 0
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
            with open(fd, "wb") as f:
                for chunk in chunks():
                    h.update(chunk)
                    f.write(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())  # a power cut must not leave a short file under the final name
            got = h.hexdigest()
            if got != digest:
                raise BlobMissing(f"blob {digest} from {where} is corrupt: its {size} bytes hash to {got}; "
                                  f"not cached")
            os.makedirs(os.path.join(self.root, digest[:2]), exist_ok=True)
            os.rename(tmp, self.path(digest))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return size

    def _added(self, digest: str, size: int) -> None:
        with self._mutex:
            self._total += size - self._sizes.get(digest, 0)
            self._sizes[digest] = size
            if self._total > self._limit:
                self._evict(keep=digest)

    def _evict(self, keep: str) -> None:
        """Remove least recently used files down to LOW_WATER * max_bytes (never ``keep``,
        never a file used within keep_recent_s)."""
        entries = self._rescan()
        target, now = LOW_WATER * self.max_bytes, time.time()
        for mtime, size, digest in sorted(entries):
            if self._total <= target or now - mtime < self.keep_recent_s:
                break  # sorted by mtime: every later file is more recent still
            if digest == keep:
                continue
            if self._remove_if_idle(digest, now):
                self._total -= size
                del self._sizes[digest]
                self.evicted += 1
        # Everything left is recent: wait for another tenth of max_bytes before rescanning.
        self._limit = max(self.max_bytes, self._total + self.max_bytes - target)

    def _remove_if_idle(self, digest: str, now: float) -> bool:
        p = self.path(digest)
        with self._lock(digest, "use", fcntl.LOCK_EX):
            try:
                if now - os.stat(p).st_mtime < self.keep_recent_s:
                    return False  # a hit touched it after the scan
                os.unlink(p)
            except FileNotFoundError:
                pass  # another process evicted it: its bytes are gone all the same
        return True

    def _rescan(self) -> list[tuple[float, int, str]]:
        """Read the folder (every process's files); reset this process's accounting to it."""
        entries = []
        for i in range(256):
            with contextlib.suppress(FileNotFoundError), os.scandir(os.path.join(self.root, f"{i:02x}")) as it:
                for e in it:
                    with contextlib.suppress(FileNotFoundError):
                        st = e.stat()
                        entries.append((st.st_mtime, st.st_size, e.name))
        self._sizes = {d: s for _, s, d in entries}
        self._total = sum(self._sizes.values())
        self._clean_tmp()
        return entries

    def _clean_tmp(self) -> None:
        now = time.time()
        for e in os.scandir(self.tmp):
            with contextlib.suppress(FileNotFoundError):
                if now - e.stat().st_mtime > STALE_TMP_S:
                    os.unlink(e.path)

    def cached_bytes(self) -> int:
        """Bytes of blob files in the folder now (a scan: for tests and status, not the hot path)."""
        with self._mutex:
            self._rescan()
            return self._total

    @contextlib.contextmanager
    def _lock(self, digest: str, kind: str, mode: int):
        fd = os.open(os.path.join(self.locks, f"{digest[:2]}.{kind}"), os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
