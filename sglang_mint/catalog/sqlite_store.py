"""The embedded metadata store: one SQLite database in WAL mode.

Schema (``catalog.db``; all tables WITHOUT ROWID so a primary-key lookup is
one B-tree descent)::

    settings(key PK, value)                      schema_version, base model
    adapters(id PK, current, latest, deleted, created, updated)
    revisions((adapter_id, revision) PK, format, rank, alpha, target_modules,
              dtype, size_bytes, created, files, content_digest, metadata)
    blobs(digest PK, refs)                       references from revisions

``resolve('acme/bot')`` is one statement: the adapters row by primary key,
joined to the revisions row (adapter_id, current) by primary key. WAL lets
readers in other threads and processes run while a writer commits; each
statement reads one snapshot, so a reader sees ``current`` and the revision it
points at from the same commit.

Every write is ``BEGIN IMMEDIATE ... COMMIT`` (one writer at a time, waiting
up to ``busy_timeout``). Connections are per thread and per process (a forked
child opens its own), so ``resolve`` needs no Python lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import threading
import time
from typing import Iterable, Iterator

from sglang_mint.catalog.errors import AdapterNotFound, RevisionConflict
from sglang_mint.catalog.store import AdapterRow, MetadataStore, Revision, RevisionRecord

SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE settings(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE adapters(
    id TEXT PRIMARY KEY,
    current INTEGER,
    latest INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE revisions(
    adapter_id TEXT NOT NULL,
    revision INTEGER NOT NULL,
    format TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha REAL NOT NULL,
    target_modules TEXT NOT NULL,
    dtype TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created REAL NOT NULL,
    files TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY(adapter_id, revision)
) WITHOUT ROWID;
CREATE TABLE blobs(digest TEXT PRIMARY KEY, refs INTEGER NOT NULL) WITHOUT ROWID;
"""

_REV_COLS = ("r.adapter_id, r.revision, r.created, r.format, r.rank, r.alpha, r.target_modules, "
             "r.dtype, r.size_bytes, r.files, r.content_digest, r.metadata")
_RESOLVE = (f"SELECT {_REV_COLS} FROM adapters a JOIN revisions r "
            "ON r.adapter_id = a.id AND r.revision = a.current WHERE a.id = ? AND a.deleted = 0")
_INSERT_REV = "INSERT INTO revisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
_ADD_REF = "INSERT INTO blobs(digest, refs) VALUES (?, 1) ON CONFLICT(digest) DO UPDATE SET refs = refs + 1"


def _rev_params(adapter_id: str, revision: int, rec: RevisionRecord, created: float) -> tuple:
    return (adapter_id, revision, rec.format, rec.rank, rec.alpha, ",".join(rec.target_modules),
            rec.dtype, rec.size_bytes, created, json.dumps(rec.files, sort_keys=True),
            rec.content_digest, json.dumps(rec.metadata, sort_keys=True))


class SqliteMetadataStore(MetadataStore):
    def __init__(self, db_path: str, cache_kib: int = 8192, busy_timeout_s: float = 60.0):
        self.db_path = db_path
        self.cache_kib = cache_kib
        self.busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._all_lock = threading.Lock()

    # -- connections ---------------------------------------------------------
    def conn(self) -> sqlite3.Connection:
        """This thread's connection (a new one after fork: SQLite handles must not cross it)."""
        c = getattr(self._local, "conn", None)
        if c is not None and self._local.pid == os.getpid():
            return c
        c = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None,
                            check_same_thread=False, cached_statements=64)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute(f"PRAGMA cache_size=-{self.cache_kib}")
        c.execute("PRAGMA mmap_size=0")
        self._local.conn, self._local.pid = c, os.getpid()
        with self._all_lock:
            self._all.append(c)
        return c

    @classmethod
    def create(cls, db_path: str, settings: dict[str, str]) -> "SqliteMetadataStore":
        c = sqlite3.connect(db_path, isolation_level=None)
        try:
            c.execute("PRAGMA journal_mode=WAL")
            c.execute("BEGIN IMMEDIATE")
            for stmt in SCHEMA.split(";"):
                if stmt.strip():
                    c.execute(stmt)
            c.executemany("INSERT INTO settings VALUES (?, ?)",
                          [("schema_version", SCHEMA_VERSION)] + sorted(settings.items()))
            c.execute("COMMIT")
        finally:
            c.close()
        return cls(db_path)

    @contextlib.contextmanager
    def _write(self):
        c = self.conn()
        c.execute("BEGIN IMMEDIATE")
        try:
            yield c
        except BaseException:
            c.execute("ROLLBACK")
            raise
        c.execute("COMMIT")

    def write_lock(self):
        return self._write()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        for c in conns:
            with contextlib.suppress(sqlite3.Error):
                c.close()
        self._local = threading.local()

    # -- reads ---------------------------------------------------------------
    def get_setting(self, key: str) -> str | None:
        row = self.conn().execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def resolve(self, adapter_id: str) -> Revision | None:
        row = self.conn().execute(_RESOLVE, (adapter_id,)).fetchone()
        return Revision(*row) if row else None

    def get_adapter(self, adapter_id: str) -> AdapterRow | None:
        row = self.conn().execute(
            "SELECT id, current, latest, deleted, created, updated FROM adapters WHERE id = ?", (adapter_id,)
        ).fetchone()
        return AdapterRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) if row else None

    def get_revision(self, adapter_id: str, revision: int) -> Revision | None:
        row = self.conn().execute(
            f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = ? AND r.revision = ?", (adapter_id, revision)
        ).fetchone()
        return Revision(*row) if row else None

    def revisions(self, adapter_id: str) -> list[Revision]:
        rows = self.conn().execute(
            f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = ? ORDER BY r.revision", (adapter_id,)
        ).fetchall()
        return [Revision(*row) for row in rows]

    def list_adapters(self, prefix, after, limit, include_deleted):
        # Ids are ASCII, so the ids starting with 'acme/' are exactly those in ['acme/', 'acme0'):
        # the prefix with its last character bumped by one is the first id past them.
        lo = max(prefix, after or "")
        sql = ("SELECT a.id, a.current, a.latest, a.deleted, a.created, a.updated, "
               f"{_REV_COLS} FROM adapters a LEFT JOIN revisions r "
               "ON r.adapter_id = a.id AND r.revision = a.current WHERE a.id >= ?")
        params: list = [lo]
        if after:
            sql += " AND a.id > ?"
            params.append(after)
        if prefix:
            sql += " AND a.id < ?"
            params.append(prefix[:-1] + chr(ord(prefix[-1]) + 1))
        if not include_deleted:
            sql += " AND a.deleted = 0"
        sql += " ORDER BY a.id LIMIT ?"
        params.append(limit)
        out = []
        for row in self.conn().execute(sql, params):
            a = AdapterRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
            out.append((a, Revision(*row[6:]) if row[6] is not None else None))
        return out

    def blob_refs(self, digest: str) -> int | None:
        row = self.conn().execute("SELECT refs FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return row[0] if row else None

    def referenced_digests(self) -> Iterator[tuple[str, int]]:
        yield from self.conn().execute("SELECT digest, refs FROM blobs ORDER BY digest").fetchall()

    def recount_refs(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (files,) in self.conn().execute("SELECT files FROM revisions"):
            for d in json.loads(files).values():
                counts[d] = counts.get(d, 0) + 1
        return counts

    def counts(self) -> dict[str, int]:
        c = self.conn()
        one = lambda sql: c.execute(sql).fetchone()[0] or 0  # noqa: E731
        return {
            "adapters": one("SELECT COUNT(*) FROM adapters WHERE deleted = 0"),
            "deleted_adapters": one("SELECT COUNT(*) FROM adapters WHERE deleted = 1"),
            "revisions": one("SELECT COUNT(*) FROM revisions"),
            "revision_bytes": one("SELECT SUM(size_bytes) FROM revisions"),
            "blobs": one("SELECT COUNT(*) FROM blobs"),
            "unreferenced_blobs": one("SELECT COUNT(*) FROM blobs WHERE refs <= 0"),
            "db_bytes": sum(os.path.getsize(p) for p in (self.db_path, self.db_path + "-wal") if os.path.exists(p)),
        }

    def check(self) -> list[str]:
        c = self.conn()
        problems = [f"sqlite integrity_check: {r[0]}" for r in c.execute("PRAGMA integrity_check") if r[0] != "ok"]
        for (aid, cur) in c.execute(
            "SELECT a.id, a.current FROM adapters a LEFT JOIN revisions r ON r.adapter_id = a.id "
            "AND r.revision = a.current WHERE a.deleted = 0 AND r.revision IS NULL"
        ):
            problems.append(f"adapter {aid!r}: current revision {cur} does not exist")
        return problems

    # -- writes --------------------------------------------------------------
    def publish(self, adapter_id, record, expect_revision, ensure_blobs) -> int:
        now = time.time()
        with self._write() as c:
            row = c.execute("SELECT latest FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
            latest = row[0] if row else 0
            if expect_revision is not None and expect_revision != latest + 1:
                if expect_revision <= latest:
                    raise RevisionConflict(
                        f"revision {expect_revision} of {adapter_id!r} already exists (latest is {latest}); "
                        "revisions are immutable, publish a new one")
                raise RevisionConflict(
                    f"cannot publish revision {expect_revision} of {adapter_id!r}: the next revision is {latest + 1}")
            same = c.execute(
                "SELECT revision FROM revisions WHERE adapter_id = ? AND content_digest = ?",
                (adapter_id, record.content_digest)).fetchone()
            if same:
                raise RevisionConflict(
                    f"{adapter_id!r} revision {same[0]} already has this exact content "
                    f"({record.content_digest[:12]}); use `mint catalog rollback {adapter_id} --to {same[0]}` "
                    "to make it current")
            ensure_blobs()
            rev = latest + 1
            c.execute(_INSERT_REV, _rev_params(adapter_id, rev, record, now))
            c.executemany(_ADD_REF, [(d,) for d in record.files.values()])
            if row:
                c.execute("UPDATE adapters SET current = ?, latest = ?, deleted = 0, updated = ? WHERE id = ?",
                          (rev, rev, now, adapter_id))
            else:
                c.execute("INSERT INTO adapters VALUES (?, ?, ?, 0, ?, ?)", (adapter_id, rev, rev, now, now))
        return rev

    def publish_many(self, items: Iterable[tuple[str, RevisionRecord]], created: float) -> int:
        items = list(items)
        refs: dict[str, int] = {}
        for _, rec in items:
            for d in rec.files.values():
                refs[d] = refs.get(d, 0) + 1
        with self._write() as c:
            try:
                c.executemany("INSERT INTO adapters VALUES (?, 1, 1, 0, ?, ?)",
                              [(aid, created, created) for aid, _ in items])
            except sqlite3.IntegrityError:
                taken = next(aid for aid, _ in items if c.execute(
                    "SELECT 1 FROM adapters WHERE id = ?", (aid,)).fetchone())
                raise RevisionConflict(f"adapter {taken!r} already exists; bulk insert adds new adapters only") from None
            c.executemany(_INSERT_REV, [_rev_params(aid, 1, rec, created) for aid, rec in items])
            c.executemany("INSERT INTO blobs(digest, refs) VALUES (?, ?) "
                          "ON CONFLICT(digest) DO UPDATE SET refs = refs + excluded.refs", sorted(refs.items()))
        return len(items)

    def set_current(self, adapter_id: str, pick) -> int:
        with self._write() as c:
            a = self.get_adapter(adapter_id)
            if a is None or a.deleted:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")
            numbers = [r[0] for r in c.execute(
                "SELECT revision FROM revisions WHERE adapter_id = ? ORDER BY revision", (adapter_id,))]
            target = pick(a, numbers)
            c.execute("UPDATE adapters SET current = ?, updated = ? WHERE id = ?", (target, time.time(), adapter_id))
        return target

    def delete(self, adapter_id: str) -> None:
        with self._write() as c:
            n = c.execute("UPDATE adapters SET deleted = 1, updated = ? WHERE id = ? AND deleted = 0",
                          (time.time(), adapter_id)).rowcount
            if n == 0:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")

    def purge_deleted(self) -> int:
        with self._write() as c:
            rows = c.execute(
                "SELECT r.adapter_id, r.revision, r.files FROM adapters a JOIN revisions r "
                "ON r.adapter_id = a.id WHERE a.deleted = 1").fetchall()
            for aid, rev, files in rows:
                for d in json.loads(files).values():
                    c.execute("UPDATE blobs SET refs = refs - 1 WHERE digest = ?", (d,))
                c.execute("DELETE FROM revisions WHERE adapter_id = ? AND revision = ?", (aid, rev))
            c.execute("UPDATE adapters SET current = NULL WHERE deleted = 1")
        return len(rows)

    def forget_blob(self, digest: str) -> None:
        self.conn().execute("DELETE FROM blobs WHERE digest = ? AND refs <= 0", (digest,))
