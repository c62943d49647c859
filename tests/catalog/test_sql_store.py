"""The metadata store itself, the same tests on SQLite and on a real PostgreSQL server.

``store`` is a ``SqlMetadataStore`` made with ``SqlMetadataStore.create``: on SQLite a file under
tmp_path, on PostgreSQL a fresh database (``pg_url``). No blob store and no Catalog: these
tests call the store's methods and read its rows back, so every statement, the upserts, the
write lock and the errors each dialect maps are exercised on both.
"""

from __future__ import annotations

import threading

import pytest

from sglang_mint.catalog.errors import AdapterNotFound, CatalogError, RevisionConflict
from sglang_mint.catalog.sql_dialects import PostgresDialect, SqliteDialect
from sglang_mint.catalog.sql_store import SCHEMA_VERSION, SqlMetadataStore
from sglang_mint.catalog.store import RevisionRecord

SETTINGS = {"base_model": '{"name": "tiny"}', "created": "1700000000.0"}


@pytest.fixture(params=["sqlite", "postgres"])
def new_dialect(request, tmp_path):
    """Makes dialects for one database that holds nothing yet (each store gets its own dialect)."""
    if request.param == "sqlite":
        return lambda: SqliteDialect(str(tmp_path / "catalog.db"))
    url = request.getfixturevalue("pg_url")
    return lambda: PostgresDialect(url)


@pytest.fixture
def store(new_dialect):
    s = SqlMetadataStore.create(new_dialect(), SETTINGS)
    yield s
    s.close()


def record(*digests: str, step: int = 0, size: int = 1000) -> RevisionRecord:
    """A revision whose files are the given blob digests; its content digest names them, e.g. 'aa-bb'."""
    files = {f"f{i}.bin": d for i, d in enumerate(digests)}
    return RevisionRecord("peft", 4, 8.0, ("q_proj", "v_proj"), "float16", size, files,
                          "-".join(digests), {"step": step})


def publish(store, adapter_id, *digests, expect=None, step=0):
    return store.publish(adapter_id, record(*digests, step=step), expect, lambda: None)


def test_settings_and_an_empty_store(store):
    assert store.get_setting("schema_version") == SCHEMA_VERSION
    assert store.get_setting("base_model") == SETTINGS["base_model"] and store.get_setting("nope") is None
    assert store.resolve("a") is None and store.get_adapter("a") is None and store.revisions("a") == []
    counts = store.counts()
    assert {k: v for k, v in counts.items() if k != "db_bytes"} == {
        "adapters": 0, "deleted_adapters": 0, "revisions": 0, "revision_bytes": 0, "blobs": 0,
        "unreferenced_blobs": 0}
    assert counts["db_bytes"] > 0 and store.check() == []


def test_create_refuses_a_database_that_holds_a_catalog(store, new_dialect):
    with pytest.raises(CatalogError, match="already holds a catalog"):
        SqlMetadataStore.create(new_dialect(), SETTINGS)
    assert store.get_setting("created") == SETTINGS["created"]


def test_publish_reads_back_and_counts_blob_references(store):
    assert publish(store, "acme/bot", "aa", "bb", step=1) == 1
    assert publish(store, "acme/bot", "aa", "cc", step=2) == 2  # "aa" shared: the upsert adds a reference
    rev = store.resolve("acme/bot")
    assert (rev.adapter_id, rev.revision, rev.format, rev.rank, rev.alpha, rev.dtype, rev.size_bytes) == (
        "acme/bot", 2, "peft", 4, 8.0, "float16", 1000)
    assert rev.target_modules == ("q_proj", "v_proj") and rev.metadata == {"step": 2}
    assert rev.files == {"f0.bin": "aa", "f1.bin": "cc"} and rev.content_digest == "aa-cc"
    assert store.get_revision("acme/bot", 1).files == {"f0.bin": "aa", "f1.bin": "bb"}
    assert store.get_revision("acme/bot", 3) is None
    assert [r.revision for r in store.revisions("acme/bot")] == [1, 2]
    a = store.get_adapter("acme/bot")
    assert (a.adapter_id, a.current, a.latest, a.deleted) == ("acme/bot", 2, 2, False) and a.updated >= a.created
    assert list(store.referenced_digests()) == [("aa", 2), ("bb", 1), ("cc", 1)]
    assert store.recount_refs() == {"aa": 2, "bb": 1, "cc": 1}
    assert [store.blob_refs(d) for d in ("aa", "bb", "dd")] == [2, 1, None]
    counts = store.counts()
    assert (counts["adapters"], counts["revisions"], counts["revision_bytes"], counts["blobs"]) == (1, 2, 2000, 3)
    assert isinstance(counts["revision_bytes"], int)


def test_publish_refusals_and_a_failed_write_leave_nothing(store):
    publish(store, "a", "aa")
    with pytest.raises(RevisionConflict, match="revision 1 of 'a' already exists \\(latest is 1\\)"):
        publish(store, "a", "bb", expect=1)
    with pytest.raises(RevisionConflict, match="the next revision is 2"):
        publish(store, "a", "bb", expect=3)
    with pytest.raises(RevisionConflict, match="'a' revision 1 already has this exact content"):
        publish(store, "a", "aa")

    def ensure_blobs():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        store.publish("a", record("cc"), None, ensure_blobs)
    with pytest.raises(OSError, match="disk full"):
        store.publish("b", record("cc"), None, ensure_blobs)
    assert publish(store, "a", "bb", expect=2) == 2
    assert store.get_adapter("b") is None and store.blob_refs("cc") is None
    assert [r.revision for r in store.revisions("a")] == [1, 2]


def test_publish_many_adds_new_adapters_in_one_transaction(store):
    publish(store, "old", "aa")
    items = [(f"bulk/{i}", record("aa", f"x{i}")) for i in range(3)]
    assert store.publish_many(items, created=1234.5) == 3
    assert store.resolve("bulk/1").files == {"f0.bin": "aa", "f1.bin": "x1"}
    assert store.get_adapter("bulk/2").created == 1234.5 and store.resolve("bulk/2").created == 1234.5
    assert store.blob_refs("aa") == 4  # 1 + 3: the bulk upsert adds to the references already there
    # An id that exists, after a new one: the refusal names the taken one and the batch leaves nothing.
    with pytest.raises(RevisionConflict, match="adapter 'old' already exists; bulk insert adds new adapters only"):
        store.publish_many([("new/0", record("nn")), ("old", record("oo"))], created=1.0)
    with pytest.raises(RevisionConflict, match="adapter 'new/1' already exists"):
        store.publish_many([("new/1", record("nn")), ("new/2", record("mm")), ("new/1", record("oo"))], created=1.0)
    assert store.get_adapter("new/0") is None and store.get_adapter("new/1") is None
    assert store.blob_refs("nn") is None and store.counts()["adapters"] == 4


def test_list_adapters_sorts_bytes_and_pages(store):
    for aid in ("acme/b", "acme/Z", "acme0", "acme", "acme/a", "other/x"):
        publish(store, aid, aid.replace("/", "_"))
    store.delete("acme/b")
    ids = lambda rows: [a.adapter_id for a, _ in rows]  # noqa: E731
    assert ids(store.list_adapters("acme/", None, 10, False)) == ["acme/Z", "acme/a"]  # 'Z' < 'a' as bytes
    assert ids(store.list_adapters("acme/", None, 10, True)) == ["acme/Z", "acme/a", "acme/b"]
    assert ids(store.list_adapters("acme/", "acme/Z", 10, True)) == ["acme/a", "acme/b"]
    assert ids(store.list_adapters("", "acme/a", 2, False)) == ["acme0", "other/x"]
    rows = store.list_adapters("acme/", None, 1, False)
    assert rows[0][1].content_digest == "acme_Z" and rows[0][0].current == 1


def test_set_current_delete_and_purge(store):
    for k in range(3):
        publish(store, "a", "shared", f"own{k}")
    assert store.set_current("a", lambda a, numbers, stored: numbers[0]) == 1
    assert store.resolve("a").revision == 1 and store.get_adapter("a").latest == 3

    def refuse(adapter, numbers, stored):
        raise ValueError(f"no: {numbers} {sorted(stored)}")

    with pytest.raises(ValueError, match="no: \\[1, 2, 3\\] \\[1, 2, 3\\]"):  # pick refuses: current stays
        store.set_current("a", refuse)
    assert store.resolve("a").revision == 1
    store.delete("a")
    assert store.resolve("a") is None and store.get_adapter("a").deleted
    for call in (lambda: store.delete("a"), lambda: store.set_current("a", lambda a, n, stored: 1)):
        with pytest.raises(AdapterNotFound, match="'a' is not in the catalog"):
            call()
    assert store.counts()["deleted_adapters"] == 1
    assert store.purge_deleted() == 3
    assert store.revisions("a") == [] and store.get_adapter("a").current is None
    assert dict(store.referenced_digests()) == {"shared": 0, "own0": 0, "own1": 0, "own2": 0}
    assert store.counts()["unreferenced_blobs"] == 4
    # Published again, the id continues its numbers: the tombstone keeps latest.
    assert publish(store, "a", "shared", "own0") == 4
    with store.write_lock():
        store.forget_blob("shared")  # still referenced: kept
        store.forget_blob("own1")
    assert store.blob_refs("shared") == 1 and store.blob_refs("own1") is None


def test_check_finds_a_current_that_points_at_nothing(store):
    publish(store, "a", "aa")
    publish(store, "b", "bb")
    with store.write_lock() as c:
        store.dialect.execute(c, "UPDATE adapters SET current = ? WHERE id = ?", (7, "b"))
    assert store.check() == ["adapter 'b': current revision 7 does not exist"]


def test_a_second_writer_waits_for_the_write_lock(store, new_dialect):
    """Another connection's write blocks while the lock is held, and commits right after."""
    publish(store, "a", "aa")
    other = SqlMetadataStore(new_dialect())
    started, done = threading.Event(), threading.Event()

    def write():
        started.set()
        publish(other, "a", "bb")
        done.set()

    t = threading.Thread(target=write)
    try:
        with store.write_lock():
            t.start()
            assert started.wait(10)
            assert not done.wait(0.5)  # a second writer, not a reader: it waits for the lock
        assert done.wait(30)
    finally:
        t.join(30)
        other.close()
    assert store.resolve("a").revision == 2


def test_connections_are_per_thread_and_reopened_after_close(store):
    publish(store, "a", "aa")
    mine, theirs = store.conn(), []
    t = threading.Thread(target=lambda: theirs.append((store.conn(), store.resolve("a").revision)))
    t.start()
    t.join(30)
    assert theirs[0][0] is not mine and theirs[0][1] == 1 and store.conn() is mine
    store.close()
    assert store.conn() is not mine and store.resolve("a").revision == 1


def test_reads_see_another_connections_commit(store, new_dialect):
    other = SqlMetadataStore(new_dialect())
    try:
        assert other.resolve("a") is None
        publish(store, "a", "aa")
        assert other.resolve("a").revision == 1
        other.delete("a")
        assert store.resolve("a") is None
    finally:
        other.close()


def test_a_full_database_is_no_room_and_leaves_nothing(tmp_path):
    """SQLite's "database or disk is full" (SQLITE_FULL: here its own page limit, max_page_count, which fails
    a write as a full disk does) is NoRoom, a 507 on the HTTP side; the write is rolled back."""
    from sglang_mint.errors import NoRoom

    store = SqlMetadataStore.create(SqliteDialect(str(tmp_path / "catalog.db")), SETTINGS)
    publish(store, "a", "aa")
    pages = store.conn().execute("PRAGMA page_count").fetchone()[0]
    store.conn().execute(f"PRAGMA max_page_count = {pages}")
    with pytest.raises(NoRoom, match=f"catalog {tmp_path / 'catalog.db'}: no room left to write \\(database or disk "
                                     "is full\\)") as refused:
        for i in range(200):  # each a new adapter, until one needs a page the limit refuses
            publish(store, f"b{i:03d}-" + "x" * 200, f"{i:04x}")
    assert refused.value.http_status == 507
    store.conn().execute("PRAGMA max_page_count = 1000000")
    assert publish(store, "a", "bb") == 2  # the store is usable, nothing half-written
    store.close()


def test_postgres_disk_full_is_no_room():
    import psycopg
    assert PostgresDialect("postgresql://x/y").no_room(psycopg.errors.DiskFull("could not extend file"))
    assert not PostgresDialect("postgresql://x/y").no_room(psycopg.errors.UniqueViolation("duplicate key"))
