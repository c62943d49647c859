"""Revisions published with ``durable=false``: recorded, served from memory, stored after the answer.

An RL loop publishes a new policy every step and samples from it at once; the
durable publish makes it wait for a copy of the blob, an fsync and, later, the
scheduler reading that blob back. With ``durable=false``:

1. The upload is received into shared memory (``/dev/shm``, when its declared
   body is at most ``SHM_UPLOAD_MAX_BYTES`` and fits with room to spare; else the
   catalog's ``uploads/`` folder on disk, so a large upload does not sit in RAM)
   and hashed as it arrives (catalog/upload_stream.py); files a trainer on this
   machine wrote into the inbox are not hashed yet. It is checked as every
   upload is.
2. The revision is recorded in the catalog, with compare-and-set as always, but
   ``durable = false``, no blob and no digests yet (Catalog._publish); ``stage``
   moves its files (a rename, no copy) into ``staged/<n>/`` under the same root,
   and this frontend serves the revision from there: the record it hands to the scheduler carries the folder
   (``Revision.staged``), which the load worker reads instead of the catalog.
3. A thread at the lowest CPU priority hashes the files, stores the blobs
   (copied and fsynced, as a durable publish does before it answers) and marks
   the revision durable with their digests, ``STORE_AFTER_S`` after the answer:
   the hashing, the copy and its fsync then stay off the path of the revision's
   first requests (on one disk, an fsync of the blob held up the next
   publish's catalog commit). A revision superseded by then (a newer one of
   the same adapter was published here with durable=false) is never stored,
   unless its adapter has gone ``MAX_UNSTORED_S`` without a store: an RL loop
   publishing a policy every step stores its latest policy once it pauses, and
   one at least every minute while it runs, not every step's blob (112 MB at
   rank 64 of a 2.7 GB Llama; on 2 cores, storing each at nice 19 still slowed
   the next requests by 10-20%). Until it is stored only this
   process serves it: another engine, or this one after a restart, resolves the
   adapter to its latest durable revision before it (frontend/catalog_names.py),
   and ``<id>@<n>`` of a revision that was never stored is a 404 saying why.
4. The staged folder is removed ``GRACE_S`` after the blob is stored (a request
   holding the record may still read it; the load worker falls back to the
   catalog once it is gone), and at once, record and all, if ``mint catalog gc``
   collected the revision before its store.

Shared memory is RAM, so nothing is left there for good. Each frontend's root
(``/dev/shm/sglang-mint-<uid>/<port>``) holds an ``owner`` file naming its process
(pid and start time); the frontend removes its root when Python exits normally (SGLang
kills its own frontend when a child dies first, e.g. after a signal to the whole process
group), and a starting frontend removes the roots of every frontend that is gone: a
killed or stopped one, or one on a port no server uses any more (measured on the development machine before this: 200
such roots, 1.7 GB of staged revisions). A root without an owner file (older versions)
goes once nothing in it has changed for ``ORPHAN_AGE_S``; an inbox folder no publish took (its trainer
killed before the request) once it is ``INBOX_STALE_S`` old, at the next publish through the inbox.
The root and the folder holding it must be this user's alone (no symbolic link, nobody else may write): their names are easy to
guess, in a folder anyone may write, and a user who made them first could swap the files of an
upload. Otherwise shared memory is not used at all, and the log says why (a root that others may
only read, as versions before d5f9e15 made it, is closed to them instead).

``MINT_FAULT_DURABLE_DELAY_S`` (seconds, default 0) holds each store back longer: fault
injection, so that tests can kill the server while a revision is not yet durable.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import os
import queue
import shutil
import stat
import tempfile
import threading
import time
from typing import TYPE_CHECKING

from sglang_mint.catalog.errors import RevisionNotFound
from sglang_mint.process import identity_running, process_identity

if TYPE_CHECKING:
    from sglang_mint.catalog.catalog import Catalog
    from sglang_mint.catalog.store import Revision

logger = logging.getLogger("sglang_mint")

SHARED_MEMORY = "/dev/shm"
GRACE_S = 5.0
SHM_UPLOAD_MAX_BYTES = 512 << 20
STORE_AFTER_S = 5.0
MAX_UNSTORED_S = 60.0
SHM_HEADROOM_BYTES = 1 << 30  # an upload goes to shared memory only if this much stays free beside it
ORPHAN_AGE_S = 24 * 3600  # a root without an owner file, unchanged this long, is removed
STAGE_SMALL_BYTES = 1 << 20  # staged in shared memory without a room check (a config beside shm files)
INBOX_STALE_S = 600  # an inbox folder unchanged this long was left by a trainer killed before its publish
OWNER = "owner"


def staging_root(port: int) -> str:
    """Where this server receives uploads and stages revisions: shared memory if the machine has it."""
    base = SHARED_MEMORY if os.access(SHARED_MEMORY, os.W_OK) else None
    return os.path.join(base, f"sglang-mint-{os.getuid()}", str(port)) if base else ""


class StagedRevisions:
    """The revisions this frontend serves from memory until (and shortly after) they are stored."""

    def __init__(self, root: str, grace_s: float = GRACE_S):
        for folder in (os.path.dirname(root), root) if root else ():
            why = _not_private(folder)
            if why is not None:
                logger.warning("not using shared memory for uploads and staged revisions: %s %s, so another "
                               "user could change what is received there", folder, why)
                root = ""
                break
        self.root = root
        self.grace_s = grace_s
        self.inbox = os.path.join(root, "inbox") if root else None
        self._owner = process_identity(os.getpid())
        if root:
            remove_roots_of_gone_frontends(os.path.dirname(root), keep=root)
            for left in ("staged", "inbox", "uploads"):  # left by a killed process on this port
                shutil.rmtree(os.path.join(root, left), ignore_errors=True)
            os.makedirs(self.inbox, mode=0o700, exist_ok=True)
            with open(os.path.join(root, OWNER), "w") as f:
                f.write(self._owner)
            atexit.register(self.close)
        self._records: dict[tuple[str, int], "Revision"] = {}
        self._lock = threading.Lock()
        self._work: queue.Queue = queue.Queue()
        self._expiring: list[tuple[float, tuple[str, int], str]] = []
        self._numbers = itertools.count()
        self._worker: threading.Thread | None = None
        self._newest: dict[str, int] = {}  # adapter id -> its newest revision staged here
        self._failed: dict[tuple[str, int], str] = {}  # a revision whose store failed -> its staged folder
        self._unstored_since: dict[str, float] = {}  # adapter id -> when it was last stored (or first staged)
        self.stored_total = self.failed_total = self.superseded_total = self.collected_total = 0

    def receive_folder(self, declared_bytes: int | None, fallback: str) -> str:
        """Where an upload of ``declared_bytes`` (None: unknown) is received: shared memory when it
        fits with room to spare, else ``fallback`` (the catalog's disk)."""
        if declared_bytes is None or not self._fits(declared_bytes):
            return fallback
        return os.path.join(self.root, "uploads")

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes may go to shared memory: at most SHM_UPLOAD_MAX_BYTES, with
        SHM_HEADROOM_BYTES left free beside them."""
        if not self.root or size > SHM_UPLOAD_MAX_BYTES:
            return False
        os.makedirs(self.root, exist_ok=True)
        free = os.statvfs(self.root)
        return free.f_bavail * free.f_frsize >= size + SHM_HEADROOM_BYTES

    def take(self, token: str, max_bytes: int, where: str) -> tuple[str, dict[str, str]]:
        """The files a trainer on this machine wrote into ``inbox/<token>/`` (client/handoff.py), moved
        out of the inbox (a rename): (their folder, {file name: path}). The folder is the caller's to
        remove; a refused one is removed here. BodyRefused (400/413) or InvalidAdapter names what is wrong."""
        from sglang_mint.catalog.upload_stream import BodyRefused

        if not self.inbox or not (len(token) == 32 and all(c in "0123456789abcdef" for c in token)):
            raise BodyRefused(400, f"inbox {token[:64]!r} is not a folder name this server handed out "
                                   "(32 hex digits, GET /mint/inbox)")
        _remove_stale_inbox_folders(self.inbox, keep=token)
        source = os.path.join(self.inbox, token)
        folder = os.path.join(self.root, "uploads", f"inbox-{token}")
        os.makedirs(os.path.dirname(folder), exist_ok=True)
        try:
            os.rename(source, folder)  # the trainer can no longer change it
        except FileNotFoundError:  # never there, or taken by another request meanwhile
            raise BodyRefused(400, f"{where}: the inbox has no folder {token!r}") from None
        try:
            # What was moved is checked, not what was looked at before the move: a folder swapped for a
            # symlink in between would lead the reads (and a durable=false stage's moves) out of the inbox.
            info = os.lstat(folder)
            if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
                raise BodyRefused(400, f"{where}: inbox entry {token!r} is not a folder of this server's user")
            return folder, _inbox_files(folder, max_bytes, where)
        except BaseException:  # refused: its bytes leave shared memory (RAM) now, not when the server stops
            _remove(folder)
            raise

    def close(self) -> None:
        """Remove this frontend's root, staged revisions and all (at exit: what was not stored by
        then is not durable, and no later process serves it)."""
        if self.root and _owner_of(self.root) == self._owner:
            shutil.rmtree(self.root, ignore_errors=True)

    def get(self, adapter_id: str, revision: int) -> "Revision | None":
        return self._records.get((adapter_id, revision))

    def stage(self, catalog: "Catalog", payload: dict, known: dict) -> "StagedFiles":
        """``Catalog._publish``'s ``stage`` (with ``functools.partial`` for ``catalog``): move the files of a
        durable=false publish into a staged folder BEFORE its revision is recorded. The record then serves
        it (``StagedFiles.serve``); a record refused discards it. A staging that fails leaves nothing, and no
        revision is recorded: a revision recorded first was current with nothing staged to serve it, and its
        number was spent. ``known``: the digests taken while the upload was received (the store takes the others)."""
        # Files received in shared memory stay there (a rename). What would be copied in (an upload
        # received on disk because it was large, a packed conversion's bytes) goes there only if it fits
        # as an upload would; a config's few bytes beside them need no room check.
        adding = sum(len(d) if not isinstance(d, str) else 0 if _inside(d, self.root) else os.path.getsize(d)
                     for d in payload.values())
        disk = os.path.join(os.path.dirname(os.path.abspath(catalog.views)), "staged-uploads")
        base = self.root if self.root and (adding <= STAGE_SMALL_BYTES or self._fits(adding)) else disk
        # A name no other folder has: the disk's staged-uploads/ is shared by every server of the catalog on
        # this machine, and keeps what a killed one left (each numbering from 0, the second's folder 0 was taken).
        os.makedirs(os.path.join(base, "staged"), exist_ok=True)
        folder = tempfile.mkdtemp(prefix=f"{next(self._numbers)}-", dir=os.path.join(base, "staged"))
        files = {}
        try:
            for name, data in payload.items():
                files[name] = os.path.join(folder, name)
                if isinstance(data, str):
                    shutil.move(data, files[name])  # a rename when the upload was received under the same root
                else:
                    with open(files[name], "xb") as f:
                        f.write(data)
        except BaseException:  # full: what was staged is RAM or disk nobody will read
            _remove(folder)
            raise
        return StagedFiles(self, catalog, folder, files, known)

    def _serve(self, catalog: "Catalog", rev: "Revision", folder: str, files: dict, known: dict) -> "Revision":
        """Serve ``rev`` (just recorded, not durable) from its staged ``folder`` and queue its blobs' store."""
        from sglang_mint.catalog.store import Revision

        staged = Revision(*rev.__reduce__()[1][:-1], staged=folder, catalog=catalog)
        with self._lock:
            self._records[(rev.adapter_id, rev.revision)] = staged
            self._newest[rev.adapter_id] = max(self._newest.get(rev.adapter_id, 0), rev.revision)
            self._unstored_since.setdefault(rev.adapter_id, time.monotonic())
            if self._worker is None:
                self._worker = threading.Thread(target=self._store_forever, name="mint-durable", daemon=True)
                self._worker.start()
        self._work.put((catalog, staged, files, known, time.monotonic()))
        return staged

    def _store_forever(self) -> None:
        _yield_cpu_to_serving()
        delay = STORE_AFTER_S + float(os.environ.get("MINT_FAULT_DURABLE_DELAY_S", "0") or 0)
        while True:
            try:
                catalog, rev, files, known, answered = self._work.get(timeout=1.0)
            except queue.Empty:
                self._expire()
                continue
            time.sleep(max(0.0, answered + delay - time.monotonic()))
            key = (rev.adapter_id, rev.revision)
            if self._superseded(key):  # never stored: served from its staged folder until that goes
                with self._lock:
                    self._expiring.append((time.monotonic() + self.grace_s, key, rev.staged))
                self._expire()
                self.superseded_total += 1
                continue
            try:
                stored = catalog.store_blobs(rev, files, known)
            except RevisionNotFound as exc:  # collected by `mint catalog gc` first: nothing to keep
                with self._lock:  # nor to serve: its record and staged folder go now, not after a grace
                    self._expiring.append((time.monotonic(), key, rev.staged))
                self._expire()
                logger.info("not storing %s@%d: %s", *key, exc)
                self.collected_total += 1  # last: a count a caller waits for means all of it is done
                continue
            except Exception as exc:  # noqa: BLE001 - the revision stays not durable, served here only
                logger.error("storing %s@%d (published with durable=false) failed; it is served by this "
                             "server only, until it stops or a newer revision is stored: %s: %s",
                             *key, type(exc).__name__, exc)
                with self._lock:
                    self._failed[key] = rev.staged
                self.failed_total += 1
                continue
            stored.staged = rev.staged  # durable now; still read from the staged folder a while
            with self._lock:
                if self._newest[rev.adapter_id] > rev.revision:
                    self._unstored_since[rev.adapter_id] = time.monotonic()
                else:
                    self._unstored_since.pop(rev.adapter_id, None)
                self._records[key] = stored
                self._expiring.append((time.monotonic() + self.grace_s, key, rev.staged))
                # An older revision whose store failed is nobody's current one now: it goes as a superseded one does.
                for old in [k for k in self._failed if k[0] == rev.adapter_id and k[1] < rev.revision]:
                    self._expiring.append((time.monotonic() + self.grace_s, old, self._failed.pop(old)))
            self._expire()
            self.stored_total += 1

    def _superseded(self, key: tuple[str, int]) -> bool:
        """Whether revision ``key`` need not be stored: a newer revision of its adapter was staged here
        since, and the adapter was stored (or first staged) less than MAX_UNSTORED_S ago."""
        adapter_id, revision = key
        with self._lock:
            return (self._newest[adapter_id] > revision
                    and time.monotonic() - self._unstored_since[adapter_id] < MAX_UNSTORED_S)

    def _expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            done = [e for e in self._expiring if e[0] <= now]
            self._expiring = [e for e in self._expiring if e[0] > now]
            for _, key, _ in done:
                self._records.pop(key, None)
            if done:  # an adapter with nothing staged here any more needs no bookkeeping
                staged = {adapter_id for adapter_id, _ in self._records}
                for adapter_id in {key[0] for _, key, _ in done} - staged:
                    self._newest.pop(adapter_id, None)
                    self._unstored_since.pop(adapter_id, None)
        for _, _, folder in done:
            shutil.rmtree(folder, ignore_errors=True)


class StagedFiles:
    """A durable=false publish's files in their staged folder, before its revision is recorded."""

    def __init__(self, owner: StagedRevisions, catalog: "Catalog", folder: str, files: dict, known: dict):
        self.owner, self.catalog, self.folder, self.files, self.known = owner, catalog, folder, files, known

    def serve(self, rev: "Revision") -> "Revision":
        """The revision was recorded: serve it from here (the served record) and store its blobs later."""
        return self.owner._serve(self.catalog, rev, self.folder, self.files, self.known)

    def discard(self) -> None:
        """The revision was not recorded (a number taken meanwhile): its files go now."""
        _remove(self.folder)


def _not_private(folder: str) -> str | None:
    """Make ``folder`` (mode 0o700) unless it exists; None if it is this user's alone, else why not:
    the root's name is easy to guess, in a folder anyone may write (``/dev/shm``)."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    info = os.lstat(folder)
    if stat.S_ISLNK(info.st_mode):
        return "is a symbolic link"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a folder"
    if info.st_uid != os.getuid():
        return f"belongs to uid {info.st_uid}"
    if info.st_mode & 0o022:
        return f"may be written by others (mode {oct(info.st_mode & 0o777)})"
    if info.st_mode & 0o077:  # 0o755, as versions before d5f9e15 made it: others could read staged weights
        os.chmod(folder, 0o700)  # ours, in a sticky or private folder: nobody else can swap it meanwhile
    return None


def _inside(path: str, root: str) -> bool:
    return bool(root) and os.path.abspath(path).startswith(os.path.abspath(root) + os.sep)


def _remove(path: str) -> None:
    """Remove a folder, or what stands in its place (a symlink is removed, never followed)."""
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _remove_stale_inbox_folders(inbox: str, keep: str) -> None:
    """Remove the inbox folders unchanged for INBOX_STALE_S: a trainer killed between writing its files
    and its publish request (or while writing them) left them there, in RAM."""
    for entry in os.scandir(inbox):
        try:
            folder = entry.is_dir(follow_symlinks=False)
            changed = _last_change(entry.path) if folder else entry.stat(follow_symlinks=False).st_mtime
            if entry.name != keep and time.time() - changed > INBOX_STALE_S:
                _remove(entry.path)
        except OSError:  # taken or removed meanwhile
            pass


def _yield_cpu_to_serving() -> None:
    """Run this thread at the lowest CPU priority (nice 19; on Linux a thread's nice value is its
    own). Hashing and copying a rank-64 adapter of a 2.7 GB Llama takes about 0.2 s of CPU: at
    normal priority on 2 cores it slowed the next requests' forward passes by 40-95 ms."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):  # not Linux, or not allowed: store at normal priority
        pass


def _owner_of(root: str) -> str | None:
    try:
        with open(os.path.join(root, OWNER)) as f:
            return f.read().strip()
    except OSError:
        return None


def _last_change(root: str) -> float:
    times = [os.lstat(root).st_mtime]
    for entry in os.scandir(root):
        times.append(entry.stat(follow_symlinks=False).st_mtime)
    return max(times)


def remove_roots_of_gone_frontends(parent: str, keep: str, now: float | None = None) -> list[str]:
    """Remove the roots under ``parent`` (other than ``keep``) whose frontend is gone; returns them."""
    now = time.time() if now is None else now
    removed = []
    for entry in os.scandir(parent):
        root = entry.path
        if root == keep or not entry.is_dir(follow_symlinks=False):
            continue
        owner = _owner_of(root)
        try:
            gone = not identity_running(owner) if owner is not None else now - _last_change(root) > ORPHAN_AGE_S
        except OSError:
            continue  # removed meanwhile by another frontend
        if gone:
            shutil.rmtree(root, ignore_errors=True)
            removed.append(root)
    if removed:
        logger.info("removed %d staging folders of frontends that are gone, under %s", len(removed), parent)
    return removed


def _inbox_files(folder: str, max_bytes: int, where: str) -> dict[str, str]:
    """{file name: path} of an inbox folder moved out of the inbox (StagedRevisions.take), checked as an
    upload's parts are: the names an adapter has, regular files, at most MAX_FILES, ``max_bytes`` in all."""
    from sglang_mint.catalog.upload import check_file_name
    from sglang_mint.catalog.upload_stream import MAX_FILES, BodyRefused

    names = sorted(os.listdir(folder))
    files, total = {}, 0
    for name in names[:MAX_FILES + 1]:
        check_file_name(name, where)
        info = os.lstat(os.path.join(folder, name))
        if not stat.S_ISREG(info.st_mode):
            raise BodyRefused(400, f"{where}: inbox file {name!r} is not a regular file")
        files[name], total = os.path.join(folder, name), total + info.st_size
    if len(names) > MAX_FILES or not files:
        raise BodyRefused(400, f"{where}: the inbox folder holds {len(names)} files; send "
                               "adapter_config.json and adapter_model.safetensors, or adapter.mintpack")
    if total > max_bytes:
        raise BodyRefused(413, f"{where}: the inbox files are {total} bytes, above this server's limit of "
                               f"{max_bytes} bytes (--mint-max-upload-bytes)")
    return files
