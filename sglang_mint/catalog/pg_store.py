"""The shared metadata store: PostgreSQL through psycopg 3, for many engines on many nodes.

Same tables and rules as sqlite_store.py (read that first); ids and digests use
the "C" collation so ``ORDER BY id`` and the prefix range of ``list_adapters``
sort bytes exactly as SQLite does::

    settings(key PK, value)          schema_version, base_model JSON, blobs (s3://... or a folder)
    adapters(id PK, current, latest, deleted, created, updated)
    revisions((adapter_id, revision) PK, format, rank, alpha, ..., files, content_digest, metadata)
    blobs(digest PK, refs)

``resolve('acme/bot')`` is one prepared statement on this thread's connection
(autocommit: one round trip, no BEGIN/COMMIT), an index lookup on adapters
joined to revisions by primary key. PostgreSQL's MVCC gives the statement one
snapshot, so a reader sees ``current`` and the revision it points at from the
same commit, and a publish on any node is visible to the next resolve anywhere.

Every write is one transaction that first takes ``pg_advisory_xact_lock``
(one writer per catalog at a time, like SQLite's BEGIN IMMEDIATE); the lock
goes with the transaction, so a writer killed with -9 releases it when the
server sees its connection drop, and its uncommitted rows vanish.

Connections are per thread and per process (a forked child opens its own and
never closes its parent's: closing would end the parent's session).
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from typing import Iterable, Iterator

from sglang_mint.catalog.errors import AdapterNotFound, CatalogError, NotACatalog, RevisionConflict
from sglang_mint.catalog.location import parse_location, redact
from sglang_mint.catalog.sqlite_store import SCHEMA_VERSION, _rev_params
from sglang_mint.catalog.store import AdapterRow, MetadataStore, Revision, RevisionRecord

# pg_advisory_xact_lock key of the catalog's write lock: 'mint' in ASCII. One database is one catalog.
WRITE_LOCK_KEY = 0x6D696E74

SCHEMA = """
CREATE TABLE settings(key TEXT COLLATE "C" PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE adapters(
    id TEXT COLLATE "C" PRIMARY KEY,
    current INTEGER,
    latest INTEGER NOT NULL,
    deleted BOOLEAN NOT NULL DEFAULT false,
    created DOUBLE PRECISION NOT NULL,
    updated DOUBLE PRECISION NOT NULL
);
CREATE TABLE revisions(
    adapter_id TEXT COLLATE "C" NOT NULL,
    revision INTEGER NOT NULL,
    format TEXT NOT NULL,
    rank INTEGER NOT NULL,
    alpha DOUBLE PRECISION NOT NULL,
    target_modules TEXT NOT NULL,
    dtype TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    files TEXT NOT NULL,
    content_digest TEXT NOT NULL,
    metadata TEXT NOT NULL,
    PRIMARY KEY(adapter_id, revision)
);
CREATE TABLE blobs(digest TEXT COLLATE "C" PRIMARY KEY, refs INTEGER NOT NULL);
"""

_REV_COLS = ("r.adapter_id, r.revision, r.created, r.format, r.rank, r.alpha, r.target_modules, "
             "r.dtype, r.size_bytes, r.files, r.content_digest, r.metadata")
_RESOLVE = (f"SELECT {_REV_COLS} FROM adapters a JOIN revisions r "
            "ON r.adapter_id = a.id AND r.revision = a.current WHERE a.id = %s AND NOT a.deleted")
_INSERT_REV = "INSERT INTO revisions VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)"
_ADD_REF = "INSERT INTO blobs(digest, refs) VALUES (%s, 1) ON CONFLICT(digest) DO UPDATE SET refs = blobs.refs + 1"


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise CatalogError(f"a postgresql:// catalog needs psycopg 3 (pip install 'psycopg[binary]'): {exc}") from None
    return psycopg


class PostgresMetadataStore(MetadataStore):
    def __init__(self, url: str, lock_timeout_s: float = 60.0, connect_timeout_s: float = 10.0):
        self.url = url
        self.display = parse_location(url).display
        self.lock_timeout_s = lock_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self._local = threading.local()
        self._all: list = []  # (connection, pid that opened it)
        self._all_lock = threading.Lock()

    # -- connections ---------------------------------------------------------
    def _connect(self):
        psycopg = _psycopg()
        try:
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)),
                                application_name="sglang-mint")
        except psycopg.Error as exc:
            raise CatalogError(f"cannot connect to catalog {self.display}: "
                               f"{redact(str(exc).strip(), self.url)}") from None
        c.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
        return c

    def conn(self):
        """This thread's connection (a new one after fork or after the server dropped it)."""
        c = getattr(self._local, "conn", None)
        if c is not None and self._local.pid == os.getpid() and not (c.closed or c.broken):
            return c
        c = self._connect()
        self._local.conn, self._local.pid = c, os.getpid()
        with self._all_lock:
            self._all.append((c, os.getpid()))
        return c

    @classmethod
    def create(cls, url: str, settings: dict[str, str]) -> "PostgresMetadataStore":
        """Create the tables in an existing, empty database, in one transaction."""
        store = cls(url)
        psycopg = _psycopg()
        c = store._connect()
        try:
            with c.transaction():
                c.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
                tables = [r[0] for r in c.execute(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
                if "settings" in tables and "adapters" in tables:
                    raise CatalogError(f"{store.display} already holds a catalog")
                if tables:
                    raise CatalogError(f"database {store.display} is not empty (tables {sorted(tables)[:5]}); "
                                       "a new catalog needs an empty database")
                for stmt in SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                with c.cursor() as cur:
                    cur.executemany("INSERT INTO settings VALUES (%s, %s)",
                                    [("schema_version", SCHEMA_VERSION)] + sorted(settings.items()))
        except psycopg.Error as exc:
            raise CatalogError(f"cannot create a catalog in {store.display}: {redact(str(exc), url)}") from None
        finally:
            c.close()
        return store

    @contextlib.contextmanager
    def _write(self):
        c = self.conn()
        with c.transaction():
            c.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield c

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
    def _one(self, sql: str, params=(), prepare: bool | None = None):
        return self.conn().execute(sql, params, prepare=prepare).fetchone()

    def get_setting(self, key: str) -> str | None:
        psycopg = _psycopg()
        try:
            row = self._one("SELECT value FROM settings WHERE key = %s", (key,))
        except psycopg.errors.UndefinedTable:
            raise NotACatalog(f"{self.display} is not a catalog (no settings table); create one with "
                              f"`mint catalog init {self.display} --blobs s3://BUCKET/PREFIX --base-model DIR`"
                              ) from None
        return row[0] if row else None

    def resolve(self, adapter_id: str) -> Revision | None:
        row = self._one(_RESOLVE, (adapter_id,), prepare=True)
        return Revision(*row) if row else None

    def get_adapter(self, adapter_id: str) -> AdapterRow | None:
        row = self._one("SELECT id, current, latest, deleted, created, updated FROM adapters WHERE id = %s",
                        (adapter_id,), prepare=True)
        return AdapterRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5]) if row else None

    def get_revision(self, adapter_id: str, revision: int) -> Revision | None:
        row = self._one(f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = %s AND r.revision = %s",
                        (adapter_id, revision), prepare=True)
        return Revision(*row) if row else None

    def revisions(self, adapter_id: str) -> list[Revision]:
        rows = self.conn().execute(
            f"SELECT {_REV_COLS} FROM revisions r WHERE r.adapter_id = %s ORDER BY r.revision", (adapter_id,)
        ).fetchall()
        return [Revision(*row) for row in rows]

    def list_adapters(self, prefix, after, limit, include_deleted):
        # As in sqlite_store: ids starting with 'acme/' are exactly those in ['acme/', 'acme0').
        lo = max(prefix, after or "")
        sql = ("SELECT a.id, a.current, a.latest, a.deleted, a.created, a.updated, "
               f"{_REV_COLS} FROM adapters a LEFT JOIN revisions r "
               "ON r.adapter_id = a.id AND r.revision = a.current WHERE a.id >= %s")
        params: list = [lo]
        if after:
            sql += " AND a.id > %s"
            params.append(after)
        if prefix:
            sql += " AND a.id < %s"
            params.append(prefix[:-1] + chr(ord(prefix[-1]) + 1))
        if not include_deleted:
            sql += " AND NOT a.deleted"
        sql += " ORDER BY a.id LIMIT %s"
        params.append(limit)
        out = []
        for row in self.conn().execute(sql, params).fetchall():
            a = AdapterRow(row[0], row[1], row[2], bool(row[3]), row[4], row[5])
            out.append((a, Revision(*row[6:]) if row[6] is not None else None))
        return out

    def blob_refs(self, digest: str) -> int | None:
        row = self._one("SELECT refs FROM blobs WHERE digest = %s", (digest,))
        return row[0] if row else None

    def referenced_digests(self) -> Iterator[tuple[str, int]]:
        yield from self.conn().execute("SELECT digest, refs FROM blobs ORDER BY digest").fetchall()

    def recount_refs(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        with self.conn().cursor() as cur:
            for (files,) in cur.execute("SELECT files FROM revisions"):
                for d in json.loads(files).values():
                    counts[d] = counts.get(d, 0) + 1
        return counts

    def counts(self) -> dict[str, int]:
        c = self.conn()
        one = lambda sql: c.execute(sql).fetchone()[0] or 0  # noqa: E731
        return {
            "adapters": one("SELECT COUNT(*) FROM adapters WHERE NOT deleted"),
            "deleted_adapters": one("SELECT COUNT(*) FROM adapters WHERE deleted"),
            "revisions": one("SELECT COUNT(*) FROM revisions"),
            "revision_bytes": int(one("SELECT SUM(size_bytes) FROM revisions")),
            "blobs": one("SELECT COUNT(*) FROM blobs"),
            "unreferenced_blobs": one("SELECT COUNT(*) FROM blobs WHERE refs <= 0"),
            "db_bytes": one("SELECT pg_database_size(current_database())"),
        }

    def check(self) -> list[str]:
        problems = []
        version = self.get_setting("schema_version")
        if version != SCHEMA_VERSION:
            problems.append(f"schema_version is {version!r}, this code reads {SCHEMA_VERSION!r}")
        for aid, cur in self.conn().execute(
            "SELECT a.id, a.current FROM adapters a LEFT JOIN revisions r ON r.adapter_id = a.id "
            "AND r.revision = a.current WHERE NOT a.deleted AND r.revision IS NULL"
        ).fetchall():
            problems.append(f"adapter {aid!r}: current revision {cur} does not exist")
        return problems

    # -- writes --------------------------------------------------------------
    def publish(self, adapter_id, record, expect_revision, ensure_blobs) -> int:
        now = time.time()
        with self._write() as c:
            row = c.execute("SELECT latest FROM adapters WHERE id = %s", (adapter_id,)).fetchone()
            latest = row[0] if row else 0
            if expect_revision is not None and expect_revision != latest + 1:
                if expect_revision <= latest:
                    raise RevisionConflict(
                        f"revision {expect_revision} of {adapter_id!r} already exists (latest is {latest}); "
                        "revisions are immutable, publish a new one")
                raise RevisionConflict(
                    f"cannot publish revision {expect_revision} of {adapter_id!r}: the next revision is {latest + 1}")
            same = c.execute("SELECT revision FROM revisions WHERE adapter_id = %s AND content_digest = %s",
                             (adapter_id, record.content_digest)).fetchone()
            if same:
                raise RevisionConflict(
                    f"{adapter_id!r} revision {same[0]} already has this exact content "
                    f"({record.content_digest[:12]}); use `mint catalog rollback {adapter_id} --to {same[0]}` "
                    "to make it current")
            ensure_blobs()
            rev = latest + 1
            c.execute(_INSERT_REV, _rev_params(adapter_id, rev, record, now))
            with c.cursor() as cur:
                cur.executemany(_ADD_REF, [(d,) for d in sorted(record.files.values())])
            if row:
                c.execute("UPDATE adapters SET current = %s, latest = %s, deleted = false, updated = %s "
                          "WHERE id = %s", (rev, rev, now, adapter_id))
            else:
                c.execute("INSERT INTO adapters VALUES (%s, %s, %s, false, %s, %s)",
                          (adapter_id, rev, rev, now, now))
        return rev

    def publish_many(self, items: Iterable[tuple[str, RevisionRecord]], created: float) -> int:
        """COPY both tables in one transaction: ~10x executemany at 10^6 rows."""
        psycopg = _psycopg()
        items = list(items)
        refs: dict[str, int] = {}
        for _, rec in items:
            for d in rec.files.values():
                refs[d] = refs.get(d, 0) + 1
        try:
            with self._write() as c, c.cursor() as cur:
                with cur.copy("COPY adapters FROM STDIN") as cp:
                    for aid, _ in items:
                        cp.write_row((aid, 1, 1, False, created, created))
                with cur.copy("COPY revisions FROM STDIN") as cp:
                    for aid, rec in items:
                        cp.write_row(_rev_params(aid, 1, rec, created))
                cur.executemany("INSERT INTO blobs(digest, refs) VALUES (%s, %s) "
                                "ON CONFLICT(digest) DO UPDATE SET refs = blobs.refs + excluded.refs",
                                sorted(refs.items()))
        except psycopg.errors.UniqueViolation:
            have = {r[0] for r in self.conn().execute(
                "SELECT id FROM adapters WHERE id = ANY(%s)", ([aid for aid, _ in items],)).fetchall()}
            taken = next((aid for aid, _ in items if aid in have), None)
            if taken is None:  # a duplicate inside the batch itself
                seen: set[str] = set()
                taken = next(aid for aid, _ in items if aid in seen or seen.add(aid))
            raise RevisionConflict(f"adapter {taken!r} already exists; bulk insert adds new adapters only") from None
        return len(items)

    def set_current(self, adapter_id: str, pick) -> int:
        with self._write() as c:
            a = self.get_adapter(adapter_id)
            if a is None or a.deleted:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")
            numbers = [r[0] for r in c.execute(
                "SELECT revision FROM revisions WHERE adapter_id = %s ORDER BY revision", (adapter_id,)).fetchall()]
            target = pick(a, numbers)
            c.execute("UPDATE adapters SET current = %s, updated = %s WHERE id = %s",
                      (target, time.time(), adapter_id))
        return target

    def delete(self, adapter_id: str) -> None:
        with self._write() as c:
            n = c.execute("UPDATE adapters SET deleted = true, updated = %s WHERE id = %s AND NOT deleted",
                          (time.time(), adapter_id)).rowcount
            if n == 0:
                raise AdapterNotFound(f"adapter {adapter_id!r} is not in the catalog")

    def purge_deleted(self) -> int:
        with self._write() as c:
            rows = c.execute(
                "SELECT r.adapter_id, r.revision, r.files FROM adapters a JOIN revisions r "
                "ON r.adapter_id = a.id WHERE a.deleted").fetchall()
            for aid, rev, files in rows:
                for d in json.loads(files).values():
                    c.execute("UPDATE blobs SET refs = refs - 1 WHERE digest = %s", (d,))
                c.execute("DELETE FROM revisions WHERE adapter_id = %s AND revision = %s", (aid, rev))
            c.execute("UPDATE adapters SET current = NULL WHERE deleted")
        return len(rows)

    def forget_blob(self, digest: str) -> None:
        self.conn().execute("DELETE FROM blobs WHERE digest = %s AND refs <= 0", (digest,))
