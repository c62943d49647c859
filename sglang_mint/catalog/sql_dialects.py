"""What differs between SQLite and PostgreSQL under ``SqlMetadataStore`` (sql_store.py).

A dialect opens connections, turns the store's ``?`` placeholders into its
own, names its column types, runs the write transaction under the catalog's
write lock, bulk-inserts rows and says which driver errors mean what.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3

from sglang_mint.catalog.errors import CatalogError
from sglang_mint.catalog.location import parse_location, redact

# pg_advisory_xact_lock key of the catalog's write lock: 'mint' in ASCII. One database is one catalog.
WRITE_LOCK_KEY = 0x6D696E74


class SqliteDialect:
    """One SQLite database file in WAL mode: the embedded catalog's ``catalog.db``.

    Tables are WITHOUT ROWID, so a primary-key lookup is one B-tree descent. WAL
    lets readers in other threads and processes run while a writer commits. Every
    write is ``BEGIN IMMEDIATE ... COMMIT`` (one writer at a time, each waiting up
    to ``busy_timeout_s``). SQLite handles must not cross a fork: the store opens
    a new connection in a forked child.
    """

    column_types = {"key": "TEXT", "bool": "INTEGER", "false": "0", "true": "1", "real": "REAL", "bigint": "INTEGER",
             "table": " WITHOUT ROWID"}
    error = sqlite3.Error
    unique_violation = sqlite3.IntegrityError
    # Catches nothing: SQLite's "no such table" stays an sqlite3.OperationalError, which
    # open_catalog reports as an unreadable catalog.db.
    undefined_table: tuple = ()

    def __init__(self, db_path: str, cache_kib: int = 8192, busy_timeout_s: float = 60.0):
        self.db_path = db_path
        self.display = db_path
        self.cache_kib = cache_kib
        self.busy_timeout_s = busy_timeout_s

    def connect(self) -> sqlite3.Connection:
        c = sqlite3.connect(self.db_path, timeout=self.busy_timeout_s, isolation_level=None,
                            check_same_thread=False, cached_statements=64)
        c.execute("PRAGMA journal_mode=WAL")
        c.execute("PRAGMA synchronous=FULL")
        c.execute(f"PRAGMA cache_size=-{self.cache_kib}")
        c.execute("PRAGMA mmap_size=0")
        return c

    def usable(self, conn) -> bool:
        return True

    def redact(self, text: str) -> str:
        return text

    def execute(self, conn, sql: str, params=None, prepare: bool | None = None):
        return conn.execute(sql, params or ())

    def executemany(self, conn, sql: str, rows) -> None:
        conn.executemany(sql, rows)

    def insert_rows(self, conn, table: str, width: int, rows) -> None:
        conn.executemany(f"INSERT INTO {table} VALUES ({', '.join('?' * width)})", rows)

    @contextlib.contextmanager
    def write_transaction(self, conn):
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # a COMMIT that failed (a full disk) leaves it open
                conn.execute("ROLLBACK")
            raise

    def no_room(self, exc: BaseException) -> bool:
        """Whether ``exc`` is SQLite's "database or disk is full" (SQLITE_FULL)."""
        return (isinstance(exc, sqlite3.OperationalError)
                and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL)

    def table_names(self, conn) -> list[str]:
        return [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]

    def integrity_problems(self, conn) -> list[str]:
        return [f"sqlite integrity_check: {r[0]}" for r in conn.execute("PRAGMA integrity_check") if r[0] != "ok"]

    def db_bytes(self, conn) -> int:
        return sum(os.path.getsize(p) for p in (self.db_path, self.db_path + "-wal") if os.path.exists(p))


@functools.lru_cache(maxsize=512)
def _format_placeholders(sql: str) -> str:
    """``?`` -> ``%s`` (psycopg's style); the store's SQL holds no other ``?`` or ``%``."""
    return sql.replace("?", "%s")


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise CatalogError(f"a postgresql:// catalog needs psycopg 3 (pip install 'psycopg[binary]'): {exc}") from None
    return psycopg


class PostgresDialect:
    """A PostgreSQL database through psycopg 3: the catalog shared by many engines on many nodes.

    Keys use the "C" collation, so ``ORDER BY id`` and the prefix range of
    ``list_adapters`` sort bytes exactly as SQLite does. Connections are in
    autocommit: a read is one round trip, and the hot reads are prepared at once.
    MVCC gives each statement one snapshot, and a publish on any node is visible
    to the next resolve anywhere. Every write is one transaction that first takes
    ``pg_advisory_xact_lock`` (like SQLite's BEGIN IMMEDIATE); the lock goes with
    the transaction, so a writer killed with -9 releases it when the server sees
    its connection drop, and its uncommitted rows vanish.
    """

    column_types = {"key": 'TEXT COLLATE "C"', "bool": "BOOLEAN", "false": "false", "true": "true", "real": "DOUBLE PRECISION",
             "bigint": "BIGINT", "table": ""}

    def __init__(self, url: str, lock_timeout_s: float = 60.0, connect_timeout_s: float = 10.0):
        self.url = url
        self.display = parse_location(url).display
        self.lock_timeout_s = lock_timeout_s
        self.connect_timeout_s = connect_timeout_s

    @property
    def error(self):
        return _psycopg().Error

    @property
    def unique_violation(self):
        return _psycopg().errors.UniqueViolation

    @property
    def undefined_table(self):
        return _psycopg().errors.UndefinedTable

    def no_room(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the server's disk_full (SQLSTATE 53100)."""
        return isinstance(exc, _psycopg().errors.DiskFull)

    def connect(self):
        psycopg = _psycopg()
        try:
            c = psycopg.connect(self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout_s)),
                                application_name="sglang-mint")
        except psycopg.Error as exc:
            raise CatalogError(f"cannot connect to catalog {self.display}: "
                               f"{redact(str(exc).strip(), self.url)}") from None
        c.execute(f"SET lock_timeout = '{int(self.lock_timeout_s * 1000)}ms'")
        return c

    def usable(self, conn) -> bool:
        return not (conn.closed or conn.broken)

    def redact(self, text: str) -> str:
        return redact(text, self.url)

    def execute(self, conn, sql: str, params=None, prepare: bool | None = None):
        return conn.execute(_format_placeholders(sql), params, prepare=prepare)

    def executemany(self, conn, sql: str, rows) -> None:
        with conn.cursor() as cur:
            cur.executemany(_format_placeholders(sql), rows)

    def insert_rows(self, conn, table: str, width: int, rows) -> None:
        """COPY: about 10x executemany at 10^6 rows."""
        with conn.cursor() as cur, cur.copy(f"COPY {table} FROM STDIN") as cp:
            for row in rows:
                cp.write_row(row)

    @contextlib.contextmanager
    def write_transaction(self, conn):
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (WRITE_LOCK_KEY,))
            yield conn

    def table_names(self, conn) -> list[str]:
        return [r[0] for r in conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]

    def integrity_problems(self, conn) -> list[str]:
        return []

    def db_bytes(self, conn) -> int:
        return conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
