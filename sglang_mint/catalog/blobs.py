"""Content-addressed blobs on the local filesystem.

Layout under ``<catalog>/blobs``: ``41/41ab...e9`` (first two hex digits as a
folder, so 10^6 blobs make 256 folders of ~4,000 files) and ``tmp/`` for
partial writes. A blob is written to ``tmp/<random>``, fsynced, renamed to its
final name and the folder fsynced; it is never modified afterwards. A crash
leaves at most a file in ``tmp/`` (removed by gc) or a complete blob that no
revision references yet (reclaimed by gc after its grace period).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import time
from typing import Iterator

from sglang_mint.catalog.errors import BlobMissing
from sglang_mint.catalog.store import BlobStore


def _syncfs_fn():
    """syncfs(2) flushes one filesystem; os.sync() flushes all of them."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


class LocalBlobStore(BlobStore):
    def __init__(self, root: str):
        self.root = root
        self.tmp = os.path.join(root, "tmp")
        self._syncfs = _syncfs_fn()
        self._known_dirs: set[str] = set()

    def create(self) -> None:
        os.makedirs(self.tmp, exist_ok=True)
        for i in range(256):
            os.makedirs(os.path.join(self.root, f"{i:02x}"), exist_ok=True)

    def path(self, digest: str) -> str:
        return os.path.join(self.root, digest[:2], digest)

    def put(self, data: bytes, sync: bool = True) -> str:
        return self._store(hashlib.sha256(data).hexdigest(), lambda fd: _write_all(fd, data), sync)

    def put_file(self, path: str, digest: str, sync: bool = True) -> str:
        def copy(fd: int) -> None:
            with open(path, "rb") as src:
                size, done = os.fstat(src.fileno()).st_size, 0
                while done < size:  # in the kernel: the bytes never pass through this process
                    n = os.sendfile(fd, src.fileno(), done, min(size - done, 1 << 30))
                    if n == 0:
                        raise OSError(f"{path} shrank while it was copied into the blob store")
                    done += n

        return self._store(digest, copy, sync)

    def _store(self, digest: str, write, sync: bool) -> str:
        """Blob ``digest`` written by ``write(fd)`` into a private temp file, then renamed into
        place (a reader never sees a partial blob); a blob already there is only touched. A write
        that fails (a full disk, a source that shrank) removes its temp file before raising."""
        final = self.path(digest)
        if os.path.exists(final):
            self.touch(digest)
            return digest
        tmp = os.path.join(self.tmp, f"{digest[:16]}.{os.getpid()}.{time.monotonic_ns()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        try:
            try:
                write(fd)
                if sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        if sync:
            self._fsync_dir(os.path.dirname(final))
        return digest

    def _fsync_dir(self, d: str) -> None:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def sync(self) -> None:
        if self._syncfs is not None:
            fd = os.open(self.root, os.O_RDONLY)
            try:
                if self._syncfs(fd) == 0:
                    return
            finally:
                os.close(fd)
        os.sync()

    def exists(self, digest: str) -> bool:
        return os.path.exists(self.path(digest))

    def touch(self, digest: str) -> None:
        try:
            os.utime(self.path(digest))
        except FileNotFoundError:
            pass
        except PermissionError:  # read-only blob owned by someone else: rewrite is not needed
            pass

    def read(self, digest: str) -> bytes:
        try:
            with open(self.path(digest), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise BlobMissing(f"blob {digest} is missing from {self.root}") from None

    def local_path(self, digest: str) -> str:
        p = self.path(digest)
        if not os.path.exists(p):
            raise BlobMissing(f"blob {digest} is missing from {self.root}")
        return p

    def iter_digests(self) -> Iterator[str]:
        for i in range(256):
            d = os.path.join(self.root, f"{i:02x}")
            try:
                names = sorted(os.listdir(d))
            except FileNotFoundError:
                continue
            yield from names

    def size(self, digest: str) -> int:
        return os.path.getsize(self.path(digest))

    def age_s(self, digest: str) -> float:
        return time.time() - os.stat(self.path(digest)).st_mtime

    def delete(self, digest: str) -> None:
        try:
            os.unlink(self.path(digest))
        except FileNotFoundError:
            pass

    def clean_temp(self, grace_s: float) -> int:
        n, now = 0, time.time()
        for name in os.listdir(self.tmp):
            p = os.path.join(self.tmp, name)
            try:
                if now - os.stat(p).st_mtime >= grace_s:
                    os.unlink(p)
                    n += 1
            except FileNotFoundError:
                pass
        return n


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
