"""What a publish does while it holds the catalog's write lock: no blob copy.

The write lock is one for the whole catalog (SQLite's single writer; a PostgreSQL advisory lock
every engine and trainer shares). A publish that copied its blobs while holding it made every
other publish, rollback and store wait for that copy and its fsync: on S3, for the upload of the
whole adapter. On both backends (SQLite + a blob folder; PostgreSQL + S3 in moto), a publish held
inside its blob write must let another adapter's publish commit meanwhile.
"""

from __future__ import annotations

import os
import threading

import pytest
from catalog_fixtures import write_peft
from hung import HUNG_AFTER_S

from sglang_mint.catalog.errors import RevisionConflict
from sglang_mint.catalog.upload import publish_files

def files_of(folder) -> dict[str, str]:
    return {name: os.path.join(folder, name) for name in ("adapter_config.json", "adapter_model.safetensors")}


def held_in_blob_writes(cat, monkeypatch, thread_name: str):
    """Blob writes on the thread named ``thread_name`` wait for ``release``; ``writing`` is set once one does."""
    writing, release = threading.Event(), threading.Event()

    def held(write):
        def wrapper(*args, **kwargs):
            if threading.current_thread().name == thread_name:
                writing.set()
                release.wait(HUNG_AFTER_S)
            return write(*args, **kwargs)
        return wrapper

    for name in ("put", "put_file"):
        monkeypatch.setattr(cat.blobs, name, held(getattr(cat.blobs, name)))
    return writing, release


def test_a_publish_writing_its_blobs_holds_up_no_other_publish(cat, tmp_path, monkeypatch):
    slow, fast = write_peft(tmp_path / "slow", rank=2, seed=1), write_peft(tmp_path / "fast", rank=2, seed=2)
    writing, release = held_in_blob_writes(cat, monkeypatch, "slow-publish")
    published, failed = {}, []

    def publish(adapter_id, folder):
        try:
            published[adapter_id] = publish_files(cat, adapter_id, files_of(folder))
        except Exception as exc:  # noqa: BLE001 - reported by the asserts below
            failed.append(exc)

    held = threading.Thread(target=publish, args=("team/slow", slow), name="slow-publish")
    held.start()
    try:
        assert writing.wait(HUNG_AFTER_S), failed
        beside = threading.Thread(target=publish, args=("team/fast", fast))
        beside.start()
        # No bound on how long it takes: one that waits for team/slow's lock gives up at the store's lock
        # timeout (60 s) and fails, or commits only after team/slow does; the asserts catch either.
        beside.join(HUNG_AFTER_S)
        assert not beside.is_alive() and "team/fast" in published, (
            f"team/fast did not commit while team/slow wrote its blobs: {failed}")
        assert "team/slow" not in published and cat.resolve("team/fast") == published["team/fast"]
    finally:
        release.set()
        held.join(HUNG_AFTER_S)
        beside.join(HUNG_AFTER_S)
    assert not failed and cat.resolve("team/slow") == published["team/slow"]
    report = cat.verify()
    assert report["ok"] and report["unreferenced_blobs"] == 0, report


def test_a_publish_refused_for_its_revision_number_writes_no_blob(cat, tmp_path):
    """The compare-and-set of a trainer that lost the race is refused before its blobs are copied."""
    publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "first", rank=2, seed=1)))
    before = set(cat.blobs.iter_digests())
    with pytest.raises(RevisionConflict, match="revision 1 of 'rl/p' already exists"):
        publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "late", rank=2, seed=2)), expect_revision=1)
    assert set(cat.blobs.iter_digests()) == before


def test_a_blob_gc_removes_between_the_copy_and_the_commit_is_written_again(cat, tmp_path, monkeypatch):
    """`mint catalog gc` may run in another process between a publish's copy and its commit. Here it
    runs on this thread at that moment: team/a held the same bytes and was deleted, so gc takes the
    blobs team/b's copy found stored. team/b must not commit without them."""
    folder = write_peft(tmp_path / "same", rank=2, seed=1)
    publish_files(cat, "team/a", files_of(folder))
    cat.delete("team/a")
    commit, reports = cat.store.publish, []

    def gc_then_commit(*args):
        reports.append(cat.gc(3600))
        return commit(*args)

    monkeypatch.setattr(cat.store, "publish", gc_then_commit)
    rev = publish_files(cat, "team/b", files_of(folder))
    assert [r["removed_blobs"] for r in reports] == [2]  # gc did take both blobs of these bytes
    for name, path in files_of(folder).items():
        with open(path, "rb") as f:
            assert cat.blobs.read(rev.files[name]) == f.read()
    report = cat.verify()
    assert report["ok"], report
