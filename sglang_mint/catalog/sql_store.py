"""The metadata store: one SQL implementation for SQLite and PostgreSQL.

Every statement is written once, with ``?`` placeholders; the dialect
(sql_dialects.py) supplies what differs: placeholders, column types,
connections, the write lock and the errors to map. Tables::

    settings(key PK, value)                      schema_version, base model, ...
    adapters(id PK, current, latest, deleted, created, updated)
    revisions((adapter_id, revision) PK, format, rank, alpha, target_modules,
              dtype, size_bytes, created, files, content_digest, metadata,
              loaded_bytes, tensor_count, durable)
    blobs(digest PK, refs)                       references from revisions

``resolve('acme/bot')`` is one statement: the adapters row by primary key,
joined to the revisions row (adapter_id, current) by primary key. It reads
one snapshot, so a reader sees ``current`` and the revision it points at from
the same commit. Every write is one transaction under the catalog's write
lock. Connections are per thread and per process (a forked child opens its
own and never closes its parent's), so ``resolve`` needs no Python lock.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterable, Iterator

from sglang_mint.catalog.errors import AdapterNotFound, CatalogError, NotACatalog, RevisionConflict
from sglang_mint.catalog.store import AdapterRow, MetadataStore, Revision, RevisionRecord, numbering_conflict
from sglang_mint.errors import NoRoom

SCHEMA_VERSION = "3"
# Version 1 lacked the loaded size (0: not recorded, see RevisionRecord), version 2 the durable flag (every
# revision before it was durable); opening such a catalog adds them.
_ADD_DURABLE = "ALTER TABLE revisions ADD COLUMN durable {bool} NOT NULL DEFAULT {true}"
UPGRADES = {"1": ("ALTER TABLE revisions ADD COLUMN loaded_bytes {bigint} NOT NULL DEFAULT 0",
                  "ALTER TABLE revisions ADD COLUMN tensor_count INTEGER NOT NULL DEFAULT 0", _ADD_DURABLE),
            "2": (_ADD_DURABLE,)}

# {key}: a text primary key that sorts bytes ("C" collation on PostgreSQL, SQLite's default).
SCHEMA = """
CREATE TABLE settings(key {key} PRIMARY KEY, value TEXT NOT NULL){table};
CREATE TABLE adapters(
    id {key} PRIMARY KEY,
    current INTEGER,
    latest INTEGER NOT NULL,
    deleted {bool} NOT NULL DEFAULT {false},
    created {real} NOT NULL,
    updated {real} NOT NULL
){table};
CREATE TABLE revisions(
    adapter_id {key} NOT NULL,
    revision INTEGER NOT NULL,
    format TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha {real} NOT NULL,
    target_modules TEXT NOT NULL,
    dtype TEXT NOT NULL,
    size_bytes {bigint} NOT NULL,
    created {real} NOT NULL,
    files TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    metadata TEXT NOT NULL,
    loaded_bytes {bigint} NOT NULL DEFAULT 0,
    tensor_count INTEGER NOT NULL DEFAULT 0,
    durable {bool} NOT NULL DEFAULT {true},
    PRIMARY KEY(adapter_id, revision)
){table};
CREATE TABLE blobs(digest {key} PRIMARY KEY, refs INTEGER NOT NULL){table};
"""

_REV_COLS = ("r.adapter_id, r.revision, r.created, r.format, r.rank, r.alpha, r.target_modules, "
             "r.dtype, r.size_bytes, r.files, r.content_digest, r.metadata, r.loaded_bytes, r.tensor_count, r.durable")
_RESOLVE = (f"SELECT {_REV_COLS} FROM adapters a JOIN revisions r "
            "ON r.adapter_id = a.id AND r.revision = a.current WHERE a.id = ? AND a.deleted = FALSE")
_INSERT_REV = "INSERT INTO revisions VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
# PostgreSQL needs the table name on the right: a bare ``refs`` could be the proposed row's.
_ADD_REF = "INSERT INTO blobs(digest, refs) VALUES (?, 1) ON CONFLICT(digest) DO UPDATE SET refs = blobs.refs + 1"
_ADD_REFS = ("INSERT INTO blobs(digest, refs) VALUES (?, ?) "
             "ON CONFLICT(digest) DO UPDATE SET refs = blobs.refs + excluded.refs")
# Ids per ``IN (...)`` lookup, well under both servers' limit on parameters per statement.
_IN_CHUNK = 500


def _rev_params(adapter_id: str, revision: int, rec: RevisionRecord, created: float) -> tuple:
    return (adapter_id, revision, rec.format, rec.rank, rec.alpha, ",".join(rec.target_modules),
            rec.dtype, rec.size_bytes, created, json.dumps(rec.files, sort_keys=True),
            rec.content_digest, json.dumps(rec.metadata, sort_keys=True), rec.loaded_bytes, rec.tensor_count,
            rec.durable)


def _adapter_row(row) -> AdapterRow:
    return AdapterRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5])


class SqlMetadataStore(MetadataStore):
    """A ``MetadataStore`` on the database ``dialect`` opens (a ``SqliteDialect`` or ``PostgresDialect``)."""

    def __init__(self, dialect):
        self.dialect = dialect
        self._local = threading.local()
        self._all: list = []  # (connection, pid that opened it)
        self._all_lock = threading.Lock()

    # -- connections ---------------------------------------------------------
    def conn(self):
        """This thread's connection (a new one after fork, or after the server dropped it)."""
        c = getattr(self._local, "conn", None)
        if c is not None and self._local.pid == os.getpid() and self.dialect.usable(c):
            return c
        c = self.dialect.connect()
        self._local.conn, self._local.pid = c, os.getpid()
        with self._all_lock:
            self._all.append((c, os.getpid()))
        return c

    @classmethod
    def create(cls, dialect, settings: dict[str, str]) -> "SqlMetadataStore":
        """Create the tables in an empty database, in one transaction under the write lock."""
        c = dialect.connect()
        try:
            with dialect.write_transaction(c):
                tables = dialect.table_names(c)
                if "settings" in tables and "adapters" in tables:
                    raise CatalogError(f"{dialect.display} already holds a catalog")
                if tables:
                    raise CatalogError(f"database {dialect.display} is not empty (tables {sorted(tables)[:5]}); "
                                       "a new catalog needs an empty database")
                for stmt in SCHEMA.format(**dialect.column_types).split(";"):
                    if stmt.strip():
                        dialect.execute(c, stmt)
                dialect.executemany(c, "INSERT INTO settings VALUES (?, ?)",
                                    [("schema_version", SCHEMA_VERSION)] + sorted(settings.items()))
        except dialect.error as exc:
            raise CatalogError(f"cannot create a catalog in {dialect.display}: {dialect.redact(str(exc))}") from None
        finally:
            c.close()
        return cls(dialect)

    def upgrade(self) -> None:
        """Bring a catalog written by an older version to this schema, in one transaction."""
        if self.get_setting("schema_version") not in UPGRADES:
            return
        with self._write() as c:
            version = self.dialect.execute(c, "SELECT value FROM settings WHERE key = 'schema_version'").fetchone()[0]
            for stmt in UPGRADES.get(version, ()):
                self.dialect.execute(c, stmt.format(**self.dialect.column_types))
            self.dialect.execute(c, "UPDATE settings SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))

    @contextlib.contextmanager
    def _write(self):
        """One write transaction; a database that found no room for it raises NoRoom (it was rolled back)."""
        try:
            with self.dialect.write_transaction(self.conn()) as c:
                yield c
        except self.dialect.error as exc:
            if not self.dialect.no_room(exc):
                raise
            raise NoRoom(f"catalog {self.dialect.display}: no room left to write ({exc}); free space there, "
                         "or raise the quota, and try again") from exc

    def write_lock(self):
        return self._write()

    def close(self) -> None:
        with self._all_lock:
            conns, self._all = self._all, []
        me = os.getpid()
        for c, pid in conns:
            if pid == me:
                with contextlib.suppress(Exception):
                    c.close()
        self._local = threading.local()

    # -- reads ---------------------------------------------------------------
    def _run(self, sql: str, params=None, prepare: bool | None = None):
        """Execute on this thread's connection; ``prepare``: a hot statement (PostgreSQL prepares it at once)."""
        return self.dialect.execute(self.conn(), sql, params, prepare)

    def get_setting(self, key: str) -> str | None:
        try:
            row = self._run("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        except self.dialect.undefined_table:
            raise NotACatalog(f"{self.dialect.display} is not a catalog (no settings table); create one with "
                              f"`mint catalog init {self.dialect.display} --blobs s3://BUCKET/PREFIX "
                              "--base-model DIR`") from None
        return row[0] if row else None

    def replace_setting(self, key: str, old: str, new: str) -> bool:
        """Set ``key`` to ``new`` if it still holds ``old``: one UPDATE in a write transaction, so a reader
        sees the old value or the new one; False (nothing written) if another writer changed it first."""
        with self._write() as c:
            cur = self.dialect.execute(c, "UPDATE settings SET value = ? WHERE key = ? AND value = ?", (new, key, old))
            return cur.rowcount == 1

    def resolve(self, adapter_id: str) -> Revision | None:
        row = self._run(_RESOLVE, (adapter_id,), prepare=True).fetchone()
        return Revision(*row) if row else None

    def get_adapter(self, adapter_id: str) -> AdapterRow | None:
        row = self._run("SELECT id, current, latest, deleted, created, updated FROM adapters WHERE id = ?",
                        (adapter_id,), prepare=True).fetchone()
        return _adapter_row(row) if row else None

    def get_revision(self, adapter_id: str, revision: int) -> Revision | None:
        row = self._run(f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = ? AND r.revision = ?",
                        (adapter_id, revision), prepare=True).fetchone()
        return Revision(*row) if row else None

    def latest_durable(self, adapter_id: str, below: int) -> Revision | None:
        row = self._run(f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = ? AND r.revision < ? "
                        "AND r.durable = TRUE ORDER BY r.revision DESC LIMIT 1", (adapter_id, below)).fetchone()
        return Revision(*row) if row else None

    def not_durable(self) -> list[tuple[str, int, dict]]:
        rows = self._run("SELECT adapter_id, revision, files FROM revisions WHERE durable = FALSE "
                         "ORDER BY adapter_id, revision").fetchall()
        return [(aid, rev, json.loads(files)) for aid, rev, files in rows]

    def revisions(self, adapter_id: str) -> list[Revision]:
        rows = self._run(f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = ? ORDER BY r.revision",
                         (adapter_id,)).fetchall()
        return [Revision(*row) for row in rows]

    def list_adapters(self, prefix, after, limit, include_deleted):
        # Ids are ASCII and sort as bytes, so the ids starting with 'acme/' are exactly those in
        # ['acme/', 'acme0'): the prefix with its last character bumped by one is the first id past them.
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
            sql += " AND a.deleted = FALSE"
        sql += " ORDER BY a.id LIMIT ?"
        params.append(limit)
        return [(_adapter_row(row), Revision(*row[6:]) if row[6] is not None else None)
                for row in self._run(sql, params).fetchall()]

    def blob_refs(self, digest: str) -> int | None:
        row = self._run("SELECT refs FROM blobs WHERE digest = ?", (digest,)).fetchone()
        return row[0] if row else None

    def referenced_digests(self) -> Iterator[tuple[str, int]]:
        yield from self._run("SELECT digest, refs FROM blobs ORDER BY digest").fetchall()

    def recount_refs(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for (files,) in self._run("SELECT files FROM revisions"):
            for d in json.loads(files).values():
                counts[d] = counts.get(d, 0) + 1
        return counts

    def counts(self) -> dict[str, int]:
        one = lambda sql: self._run(sql).fetchone()[0] or 0  # noqa: E731
        return {
            "adapters": one("SELECT COUNT(*) FROM adapters WHERE deleted = FALSE"),
            "deleted_adapters": one("SELECT COUNT(*) FROM adapters WHERE deleted = TRUE"),
            "revisions": one("SELECT COUNT(*) FROM revisions"),
            "revision_bytes": int(one("SELECT SUM(size_bytes) FROM revisions")),  # PostgreSQL sums to numeric
            "blobs": one("SELECT COUNT(*) FROM blobs"),
            "unreferenced_blobs": one("SELECT COUNT(*) FROM blobs WHERE refs <= 0"),
            "db_bytes": self.dialect.db_bytes(self.conn()),
        }

    def check(self) -> list[str]:
        problems = self.dialect.integrity_problems(self.conn())
        version = self.get_setting("schema_version")
        if version != SCHEMA_VERSION:
            problems.append(f"schema_version is {version!r}, this code reads {SCHEMA_VERSION!r}")
        for aid, cur in self._run(
            "SELECT a.id, a.current FROM adapters a LEFT JOIN revisions r ON r.adapter_id = a.id "
            "AND r.revision = a.current WHERE a.deleted = FALSE AND r.revision IS NULL"
        ).fetchall():
            problems.append(f"adapter {aid!r}: current revision {cur} does not exist")
        return problems

    # -- writes --------------------------------------------------------------
    def publish(self, adapter_id, record, expect_revision, ensure_blobs) -> int:
        now = time.time()
        run = self.dialect.execute
        with self._write() as c:
            row = run(c, "SELECT latest FROM adapters WHERE id = ?", (adapter_id,)).fetchone()
            latest = row[0] if row else 0
            conflict = numbering_conflict(adapter_id, expect_revision, latest)
            if conflict is not None:
                raise conflict
            same = None if not record.files else run(  # durable=false: no digest yet (Catalog._publish)
                c, "SELECT revision FROM revisions WHERE adapter_id = ? AND content_digest = ?",
                (adapter_id, record.content_digest)).fetchone()
            if same:
                raise RevisionConflict(
                    f"{adapter_id!r} revision {same[0]} already has this exact content "
                    f"({record.content_digest[:12]}); use `mint catalog rollback CATALOG {adapter_id} --to {same[0]}` "
                    "to make it current")
            ensure_blobs()
            rev = latest + 1
            run(c, _INSERT_REV, _rev_params(adapter_id, rev, record, now))
            self.dialect.executemany(c, _ADD_REF, [(d,) for d in sorted(record.files.values())])
            if row:
                run(c, "UPDATE adapters SET current = ?, latest = ?, deleted = FALSE, updated = ? WHERE id = ?",
                    (rev, rev, now, adapter_id))
            else:
                run(c, "INSERT INTO adapters VALUES (?, ?, ?, FALSE, ?, ?)", (adapter_id, rev, rev, now, now))
        return rev

    def publish_many(self, items: Iterable[tuple[str, RevisionRecord]], created: float) -> int:
        """Both tables in one transaction, with the dialect's fastest bulk insert (PostgreSQL: COPY)."""
        items = list(items)
        refs: dict[str, int] = {}
        for _, rec in items:
            for d in rec.files.values():
                refs[d] = refs.get(d, 0) + 1
        try:
            with self._write() as c:
                self.dialect.insert_rows(c, "adapters", 6, ((aid, 1, 1, False, created, created) for aid, _ in items))
                self.dialect.insert_rows(c, "revisions", 15, (_rev_params(aid, 1, rec, created) for aid, rec in items))
                self.dialect.executemany(c, _ADD_REFS, sorted(refs.items()))
        except self.dialect.unique_violation:
            # Rolled back: the ids that exist now are the ones taken before this batch.
            ids = [aid for aid, _ in items]
            have: set[str] = set()
            for i in range(0, len(ids), _IN_CHUNK):
                chunk = ids[i:i + _IN_CHUNK]
                have.update(r[0] for r in self._run(
                    f"SELECT id FROM adapters WHERE id IN ({', '.join('?' * len(chunk))})", chunk).fetchall())
            taken = next((aid for aid in ids if aid in have), None)
            if taken is None:  # a duplicate inside the batch itself
                seen: set[str] = set()
                taken = next(aid for aid in ids if aid in seen or seen.add(aid))
            raise RevisionConflict(f"adapter {taken!r} already exists; bulk insert adds new adapters only") from None
        return len(items)

    def mark_durable(self, adapter_id: str, revision: int, files: dict[str, str], content_digest: str,
                     ensure_blobs) -> None:
        with self._write() as c:
            done = self.dialect.execute(
                c, "UPDATE revisions SET durable = TRUE, files = ?, content_digest = ? "
                   "WHERE adapter_id = ? AND revision = ? AND durable = FALSE",
                (json.dumps(files, sort_keys=True), content_digest, adapter_id, revision)).rowcount
            if done:  # else stored already, or purged meanwhile: no references to add
                ensure_blobs()
                self.dialect.executemany(c, _ADD_REF, [(d,) for d in sorted(files.values())])

    def set_current(self, adapter_id: str, pick) -> int:
        run = self.dialect.execute
        with self._write() as c:
            a = self.get_adapter(adapter_id)
            if a is None or a.deleted:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")
            rows = run(c, "SELECT revision, durable FROM revisions WHERE adapter_id = ? ORDER BY revision",
                       (adapter_id,)).fetchall()
            target = pick(a, [n for n, _ in rows], {n for n, durable in rows if durable})
            run(c, "UPDATE adapters SET current = ?, updated = ? WHERE id = ?", (target, time.time(), adapter_id))
        return target

    def delete(self, adapter_id: str) -> None:
        with self._write() as c:
            n = self.dialect.execute(c, "UPDATE adapters SET deleted = TRUE, updated = ? WHERE id = ? "
                                        "AND deleted = FALSE", (time.time(), adapter_id)).rowcount
            if n == 0:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")

    def purge_deleted(self) -> int:
        run = self.dialect.execute
        with self._write() as c:
            rows = run(c, "SELECT r.adapter_id, r.revision, r.files FROM adapters a JOIN revisions r "
                          "ON r.adapter_id = a.id WHERE a.deleted = TRUE").fetchall()
            for aid, rev, files in rows:
                for d in json.loads(files).values():
                    run(c, "UPDATE blobs SET refs = refs - 1 WHERE digest = ?", (d,))
                run(c, "DELETE FROM revisions WHERE adapter_id = ? AND revision = ?", (aid, rev))
            run(c, "UPDATE adapters SET current = NULL WHERE deleted = TRUE")
        return len(rows)

    def purge_never_stored(self, created_before: float) -> list[tuple[str, int]]:
        run = self.dialect.execute
        with self._write() as c:
            rows = run(c, "SELECT r.adapter_id, r.revision, r.files FROM revisions r JOIN adapters a "
                          "ON a.id = r.adapter_id WHERE r.durable = FALSE AND r.created < ? AND r.revision < a.latest "
                          "AND (a.current IS NULL OR r.revision <> a.current)", (created_before,)).fetchall()
            for aid, rev, files in rows:
                for d in json.loads(files).values():
                    run(c, "UPDATE blobs SET refs = refs - 1 WHERE digest = ?", (d,))
                run(c, "DELETE FROM revisions WHERE adapter_id = ? AND revision = ?", (aid, rev))
        return [(aid, rev) for aid, rev, _ in rows]

    def forget_blob(self, digest: str) -> None:
        self._run("DELETE FROM blobs WHERE digest = ? AND refs <= 0", (digest,))
