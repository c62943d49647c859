"""Publish / rollback / resolve / delete / gc / list semantics, and opening non-catalogs."""

import os
import shutil
import sqlite3
import threading

import pytest
from catalog_fixtures import overwrite_blob, written

from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.errors import (AdapterNotFound, CatalogError, InvalidAdapterId, InvalidMetadata,
                                        NotACatalog, RevisionConflict, RevisionNotFound)


def test_publish_moves_current_and_rollback_moves_it_back(cat, peft):
    r1 = cat.publish("acme/bot", peft("v1", seed=1), {"step": 1})
    r2 = cat.publish("acme/bot", peft("v2", seed=2), {"step": 2})
    r3 = cat.publish("acme/bot", peft("v3", seed=3), {"step": 3})
    assert [r1.revision, r2.revision, r3.revision] == [1, 2, 3]
    assert cat.resolve("acme/bot") == r3 and cat.resolve("acme/bot").metadata == {"step": 3}
    assert cat.rollback("acme/bot").revision == 2
    assert cat.resolve("acme/bot").revision == 2
    assert cat.rollback("acme/bot").revision == 1
    with pytest.raises(CatalogError, match="past its first revision") as exc:  # 409: the adapter is there
        cat.rollback("acme/bot")
    assert exc.value.http_status == 409
    assert cat.rollback("acme/bot", to=3).revision == 3  # a named revision, also forwards
    with pytest.raises(RevisionNotFound, match="has no revision 9"):
        cat.rollback("acme/bot", to=9)
    with pytest.raises(CatalogError, match="already current"):
        cat.rollback("acme/bot", to=3)
    cat.rollback("acme/bot", to=1)
    r4 = cat.publish("acme/bot", peft("v4", seed=4))  # numbers continue after the highest
    assert r4.revision == 4 and cat.resolve("acme/bot").revision == 4
    info = cat.get("acme/bot")
    assert (info.current, info.latest, [r.revision for r in info.revisions]) == (4, 4, [1, 2, 3, 4])


def test_metadata_that_is_not_plain_json_is_refused_before_anything_is_written(cat, peft):
    # Each was stored (NaN as non-JSON text), and GET /mint/adapters/{id}, written by orjson, then answered 500.
    deep: list = []
    for _ in range(300):
        deep = [deep]
    cases = [({"loss": float("nan")}, r"metadata\['loss'\]: nan is not a JSON number"),
             ({"step": 2**64}, r"metadata\['step'\]: an integer of 65 bits"),
             ({"note": "\ud800"}, r"metadata\['note'\]: .* lone UTF-16 surrogate"),
             ({"x": deep}, r"metadata\['x'\]\[0\].* nested more than 64 levels"),
             ({1: "a"}, r"metadata: key 1 is not a string"),
             ({"when": {1, 2}}, r"metadata\['when'\]: a set is not a JSON value"),
             ([("step", 1)], r"metadata must be a JSON object")]
    for metadata, match in cases:
        with pytest.raises(InvalidMetadata, match=match) as exc:
            cat.publish("acme/bot", peft("v1", seed=1), metadata)
        assert exc.value.http_status == 400
    assert written(cat) == (0, 0, [])
    assert cat.publish("acme/bot", peft("v1", seed=1), {"step": 2**64 - 1, "lr": [-2**63, 1e-5, None, True]})


def test_same_revision_twice_is_refused(cat, peft):
    folder = peft("v1", seed=1)
    cat.publish("a", folder)
    before = written(cat)
    with pytest.raises(RevisionConflict, match="revision 1 already has this exact content"):
        cat.publish("a", folder)
    with pytest.raises(RevisionConflict, match="revision 1 of 'a' already exists"):
        cat.publish("a", peft("v2", seed=2), expect_revision=1)
    with pytest.raises(RevisionConflict, match="the next revision is 2"):
        cat.publish("a", peft("v2", seed=2), expect_revision=5)
    assert written(cat) == before
    assert cat.publish("a", peft("v2", seed=2), expect_revision=2).revision == 2
    # the same content under another id is fine (and shares its blobs)
    assert cat.publish("b", folder).revision == 1
    assert cat.stats()["blobs"] == 3  # one config + two weight files


def test_resolve_unknown_invalid_and_deleted(cat, peft):
    with pytest.raises(AdapterNotFound, match="'nope' is not in the catalog"):
        cat.resolve("nope")
    with pytest.raises(InvalidAdapterId):
        cat.resolve("../etc/passwd")
    cat.publish("gone", peft("g", seed=1))
    cat.delete("gone")
    with pytest.raises(AdapterNotFound):
        cat.resolve("gone")
    with pytest.raises(AdapterNotFound):
        cat.delete("gone")
    with pytest.raises(AdapterNotFound):
        cat.rollback("gone")
    assert cat.get("gone").deleted
    # publishing the id again revives it and never reuses a number
    assert cat.publish("gone", peft("g2", seed=2)).revision == 2


def test_gc_reclaims_only_unreferenced_blobs(cat, peft):
    shared = peft("shared", seed=1)
    cat.publish("a", shared)
    cat.publish("b", shared)  # same blobs as a
    cat.publish("c", peft("c", seed=2))
    old = cat.publish("c", peft("c2", seed=3))  # c@1 is kept for rollback
    view_a = cat.resolve("a").local_path()
    assert cat.gc(grace_s=0)["removed_blobs"] == 0
    cat.delete("a")
    rep = cat.gc(grace_s=0)
    assert rep["removed_blobs"] == 0 and rep["purged_revisions"] == 1  # b still holds the shared blobs
    assert os.path.isdir(view_a)  # the view is still backed by live blobs
    cat.delete("b")
    rep = cat.gc(grace_s=0)
    assert rep["removed_blobs"] == 1 and rep["removed_views"] == 1  # weights only: the config is shared with c
    assert not os.path.exists(view_a)
    assert cat.get_revision("c", 1).revision == 1 and cat.resolve("c") == old
    assert cat.rollback("c").local_path()
    assert cat.verify()["ok"]


def test_gc_respects_grace_for_orphan_files(cat):
    digest = cat.blobs.put(b"orphan left by a publish killed before its commit")
    # A local store also leaves partial writes in tmp/; an S3 PutObject is whole or absent.
    partial = 0
    if hasattr(cat.blobs, "tmp"):
        open(os.path.join(cat.blobs.tmp, "partial.123"), "wb").close()
        partial = 1
    assert cat.gc(grace_s=3600)["removed_blobs"] == 0 and cat.blobs.exists(digest)
    rep = cat.gc(grace_s=0)
    assert rep["removed_blobs"] == 1 and rep["removed_temp_files"] == partial and not cat.blobs.exists(digest)


def test_gc_removes_views_left_half_built_or_half_removed(cat, peft):
    """A process killed while it built a view (in views/tmp) or removed one (renamed there first)
    leaves hard links that keep blobs' bytes on disk after gc deleted the blobs themselves."""
    rev = cat.publish("a", str(peft("a", seed=3)))
    view = rev.local_path()
    left = [os.path.join(cat.views, "tmp", name) for name in ("0123abcd", "gone-4567ef")]
    for folder in left:
        shutil.copytree(view, folder, copy_function=os.link)
    cat.delete("a")
    rep = cat.gc(grace_s=3600)
    assert rep["removed_blobs"] == 2 and rep["removed_temp_files"] == 0  # recent: maybe a build under way
    assert all(map(os.path.isdir, left))
    assert cat.gc(grace_s=0)["removed_temp_files"] == 2
    assert not any(map(os.path.exists, left))


def test_publish_rewrites_a_blob_gc_removed_meanwhile(cat, peft, monkeypatch):
    """gc may delete a blob between our write and our commit; publish re-checks under the lock."""
    folder = peft("x", seed=5)
    real_publish = cat.store.publish

    def publish_after_gc(*args):
        for d in list(cat.blobs.iter_digests()):
            cat.blobs.delete(d)
        return real_publish(*args)

    monkeypatch.setattr(cat.store, "publish", publish_after_gc)
    rev = cat.publish("x", folder)
    assert all(cat.blobs.exists(d) for d in rev.files.values())
    assert cat.verify()["ok"]


def test_list_prefix_and_pagination(cat, peft):
    folder = peft("p", rank=1)
    ids = [f"acme/m{i:02d}" for i in range(25)] + ["acme", "acme0", "acmf/x", "zeta/y", "acm/z"]
    for i, aid in enumerate(ids):
        cat.publish_peft(aid, __import__("sglang_mint.adapters.peft", fromlist=["x"]).read_peft_folder(
            folder, cat.base), {"i": i})
    cat.delete("acme/m03")
    got, after = [], None
    while True:
        page = cat.list("acme/", after=after, limit=7)
        got += [a.adapter_id for a, _ in page.items]
        assert all(r.revision == 1 for _, r in page.items)
        after = page.next_after
        if after is None:
            break
    assert got == [f"acme/m{i:02d}" for i in range(25) if i != 3]
    assert "acme/m03" in [a.adapter_id for a, _ in cat.list("acme/", limit=100, include_deleted=True).items]
    assert [a.adapter_id for a, _ in cat.list("", limit=100).items][:2] == ["acm/z", "acme"]
    assert [a.adapter_id for a, _ in cat.list("acme", limit=3).items] == ["acme", "acme/m00", "acme/m01"]
    with pytest.raises(CatalogError):
        cat.list(limit=0)


def test_not_a_catalog(tmp_path, base_dir):
    # Folder catalogs only (junk catalog.db files); test_postgres.py has the postgresql:// refusals.
    with pytest.raises(NotACatalog, match="is not a folder"):
        open_catalog(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotACatalog, match="no catalog.db"):
        open_catalog(str(tmp_path / "empty"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "catalog.db").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(NotACatalog, match="unreadable"):
        open_catalog(str(tmp_path / "junk"))
    (tmp_path / "other").mkdir()
    sqlite3.connect(tmp_path / "other" / "catalog.db").execute("CREATE TABLE t(x)").connection.close()
    with pytest.raises(NotACatalog, match="unreadable"):
        open_catalog(str(tmp_path / "other"))
    assert not os.path.exists(tmp_path / "empty" / "catalog.db")  # opening never creates
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("hello")
    with pytest.raises(CatalogError, match="not empty"):
        init_catalog(str(tmp_path / "busy"), base_dir)
    c = init_catalog(str(tmp_path / "ok"), base_dir)
    c.close()
    with pytest.raises(CatalogError, match="already holds a catalog"):
        init_catalog(str(tmp_path / "ok"), base_dir)


def test_resolve_from_many_threads(cat, peft):
    for i in range(20):
        cat.publish(f"t/{i}", peft(f"t{i}", seed=i, rank=1))
    errors = []

    def work(k):
        try:
            for j in range(300):
                r = cat.resolve(f"t/{(j + k) % 20}")
                assert r.adapter_id == f"t/{(j + k) % 20}" and r.revision == 1
            os.listdir(cat.resolve(f"t/{k}").local_path())
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_verify_finds_corrupt_and_missing_blobs(cat, peft):
    rev = cat.publish("v", peft("v", seed=9))
    assert cat.verify()["ok"]
    weights = rev.files["adapter_model.safetensors"]
    overwrite_blob(cat, weights, lambda data: data[:100] + b"\x00\x01\x02" + data[103:])
    rep = cat.verify()
    assert not rep["ok"] and "corrupt" in rep["problems"][0]
    assert cat.verify(rehash=False)["ok"]
    cat.blobs.delete(weights)
    rep = cat.verify()
    assert not rep["ok"] and "missing" in rep["problems"][0]


def test_a_revision_records_what_it_holds_once_loaded_and_old_catalogs_upgrade(cat, peft):
    """What the host budget charges before a read (issue 19 item 4): a rank_pattern adapter padded 8x
    records 8x its tensors. A catalog written before these columns existed opens and upgrades."""
    from safetensors.torch import load_file

    from sglang_mint.catalog import open_catalog
    from sglang_mint.catalog.sql_store import SCHEMA_VERSION

    from catalog_fixtures import peft_tensors

    wide_key = "layers.0.self_attn.q_proj"
    mixed = {k: v for k, v in peft_tensors(2).items() if wide_key not in k}
    mixed.update({k: v for k, v in peft_tensors(16).items() if wide_key in k})
    folder = peft("padded", rank=2, config={"rank_pattern": {wide_key: 16}}, tensors=mixed)
    tensors = load_file(f"{folder}/adapter_model.safetensors")
    rev = cat.publish("p/x", folder)
    wide = sum(t.numel() * t.element_size() for k, t in tensors.items() if wide_key in k)
    rest = sum(t.numel() * t.element_size() for t in tensors.values()) - wide
    assert rest > 0 and (rev.loaded_bytes, rev.tensor_count) == (wide + 8 * rest, len(tensors))
    assert cat.resolve("p/x").loaded_bytes == rev.loaded_bytes  # read back from the store

    with cat.store.write_lock() as c:  # as version 2 wrote it: no durable flag
        cat.store.dialect.execute(c, "ALTER TABLE revisions DROP COLUMN durable")
        cat.store.dialect.execute(c, "UPDATE settings SET value = '2' WHERE key = 'schema_version'")
    cat.close()
    with open_catalog(cat.path) as again:
        assert again.store.get_setting("schema_version") == SCHEMA_VERSION != "2"
        assert again.resolve("p/x").durable and again.resolve("p/x").loaded_bytes == rev.loaded_bytes
        with again.store.write_lock() as c:  # as version 1 wrote it
            for column in ("loaded_bytes", "tensor_count", "durable"):
                again.store.dialect.execute(c, f"ALTER TABLE revisions DROP COLUMN {column}")
            again.store.dialect.execute(c, "UPDATE settings SET value = '1' WHERE key = 'schema_version'")
    with open_catalog(cat.path) as again:
        assert again.store.get_setting("schema_version") == SCHEMA_VERSION != "1"
        old = again.resolve("p/x")
        assert (old.loaded_bytes, old.tensor_count) == (0, 0)  # not recorded: the budget falls back to file bytes
        assert old.durable  # every revision before the flag was stored before it was recorded
        assert again.publish("p/x", peft("plain", rank=2)).loaded_bytes > 0
        assert again.store.check() == []


def test_revision_numbers_in_refusals_are_runs_however_many_there_are():
    """An RL loop publishes a revision every step: the refusal listed every number, 10,000 of them."""
    from sglang_mint.catalog.catalog import number_spans

    assert number_spans([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert number_spans(range(1, 10_001)) == "1-10000"
    assert number_spans(range(1, 100, 2)) == "1, 3, 5, 7, ..., 95, 97, 99 (50 revisions)"
    assert len(number_spans(range(1, 20_000, 2))) < 80
    assert number_spans([]) == "none"
    for most in (1, 2, 3):  # head and tail stay one run each at least, never every run
        assert number_spans(range(1, 100, 2), most=most).count(",") <= 2


def test_a_server_given_a_missing_catalog_folder_is_told_how_to_make_one(tmp_path):
    """`--mint-catalog /nonexistent` stopped the server with "no such folder" and no hint; `mint catalog`
    commands say how to make one. Both say it in the same words."""
    from sglang_mint.config import MintConfig
    from sglang_mint.errors import MintError

    missing = str(tmp_path / "nocat")
    hint = f"create a catalog with `mint catalog init {missing} --base-model DIR`"
    with pytest.raises(MintError) as exc:
        MintConfig.from_flags(catalog=missing)
    assert str(exc.value) == f"--mint-catalog {missing}: no such folder; {hint}", str(exc.value)
    with pytest.raises(NotACatalog) as exc:  # what `mint catalog stats /nonexistent` prints
        open_catalog(missing)
    assert str(exc.value).endswith(hint), str(exc.value)
