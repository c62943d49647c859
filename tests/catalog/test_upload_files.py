"""An upload received into files is checked, hashed and stored from there (issue 19, item 3).

On both backends (SQLite + a blob folder; PostgreSQL + S3 in moto): ``publish_files`` with the
weights in a file publishes the same bytes, and this process never holds them: Python's peak
allocation stays a small fraction of the adapter. The server-level figure (peak RSS while a real
server receives an upload over HTTP) is tests/sglang/test_upload_bounds.py's.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tracemalloc

import pytest
from catalog_fixtures import write_peft

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.catalog.catalog import PENDING_DIGEST
from sglang_mint.catalog.errors import CatalogError, RevisionConflict, RevisionNotFound, RevisionNotStored
from sglang_mint.catalog.upload import publish_files


def staged_by(serve):
    """A ``stage`` for publish_files from ``serve(rev, payload, known) -> Revision``: it takes the files
    first and serves the revision once recorded (Catalog._publish)."""
    class Staged:
        def __init__(self, payload, known):
            self.payload, self.known = payload, known

        def serve(self, rev):
            return serve(rev, self.payload, self.known)

        def discard(self):
            pass

    return Staged


def files_of(folder: str) -> dict[str, str]:
    return {name: os.path.join(folder, name) for name in ("adapter_config.json", "adapter_model.safetensors")}


def test_publish_files_hashes_and_stores_from_disk(cat, tmp_path):
    publish_files(cat, "warm/up", files_of(write_peft(tmp_path / "small", rank=2)))  # clients, caches
    folder = write_peft(tmp_path / "big", rank=2048)  # 2 layers x 7 modules in float16: 16 MiB
    weights = os.path.join(folder, "adapter_model.safetensors")
    size = os.path.getsize(weights)
    assert size >= 16 << 20
    tracemalloc.start()
    try:
        rev = publish_files(cat, "big/a", files_of(folder), max_rank=4096)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # A constant (buffers of hashlib, sendfile, botocore's 1 MiB payload hashing): the bytes were never held.
    assert peak < 4 << 20, f"publishing a {size >> 20} MiB adapter allocated {peak / 2**20:.1f} MiB at peak"
    data = open(weights, "rb").read()
    assert rev.files["adapter_model.safetensors"] == hashlib.sha256(data).hexdigest()
    assert cat.blobs.read(rev.files["adapter_model.safetensors"]) == data and rev.size_bytes > size
    assert os.path.exists(weights)  # the caller's file is left for the caller to delete


@pytest.mark.parametrize("cut", [0, 5, 100, -7])
def test_a_cut_weights_file_is_refused_from_its_header(cat, tmp_path, cut):
    folder = write_peft(tmp_path / "cut", rank=4)
    weights = os.path.join(folder, "adapter_model.safetensors")
    data = open(weights, "rb").read()
    open(weights, "wb").write(data[:cut] if cut >= 0 else data[:cut])
    with pytest.raises(InvalidAdapter, match="truncated|corrupt"):
        publish_files(cat, "cut/a", files_of(folder))
    assert cat.store.counts()["revisions"] == 0


def test_a_safetensors_header_above_the_reference_parsers_limit_is_refused_unread(cat, tmp_path):
    folder = write_peft(tmp_path / "huge-header", rank=4)
    weights = os.path.join(folder, "adapter_model.safetensors")
    with open(weights, "r+b") as f:
        f.write((200_000_000).to_bytes(8, "little"))
    with pytest.raises(InvalidAdapter, match="a header of 200000000 bytes"):
        publish_files(cat, "huge/header", files_of(folder))


def test_a_revision_recorded_before_its_blobs_is_not_durable_until_they_are_stored(cat, tmp_path):
    """durable=false (frontend/staged_revisions.py): the revision is recorded, with compare-and-set,
    before its blobs exist and before its files are hashed; store_blobs hashes and completes it.
    Meanwhile latest_durable names the one before it, verify lists it as not durable rather than as
    damage, and a digest taken while receiving is handed on to the store."""
    first = publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "one", rank=2, seed=1)))
    folder = write_peft(tmp_path / "two", rank=2, seed=2)
    weights = os.path.join(folder, "adapter_model.safetensors")
    digest = hashlib.sha256(open(weights, "rb").read()).hexdigest()
    handed = {}

    def stage(rev, payload, known):
        handed.update(payload=payload, known=known)
        return rev

    second = publish_files(cat, "rl/p", files_of(folder), expect_revision=2, stage=staged_by(stage),
                           digests={"adapter_model.safetensors": digest})
    assert (second.revision, second.durable, first.durable) == (2, False, True)
    assert (second.files, second.content_digest) == ({}, PENDING_DIGEST) and not cat.blobs.exists(digest)
    assert handed["known"] == {"adapter_model.safetensors": digest}
    assert cat.resolve("rl/p") == second and cat.latest_durable("rl/p", 2) == first
    report = cat.verify()
    assert report["ok"] and report["not_durable"] == ["rl/p@2"], report
    with pytest.raises(Exception, match="revision 2 of .rl/p. already exists"):
        publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "three", rank=2, seed=3)), expect_revision=2)

    stored = cat.store_blobs(second, handed["payload"], handed["known"])
    assert stored.durable and stored.files["adapter_model.safetensors"] == digest
    assert stored.content_digest not in (PENDING_DIGEST, first.content_digest)
    assert cat.resolve("rl/p") == stored and cat.blobs.read(digest) == open(weights, "rb").read()
    assert cat.latest_durable("rl/p", 3) == stored
    report = cat.verify()
    assert report["ok"] and report["not_durable"] == [], report


def test_a_record_taken_before_its_store_reads_the_stored_revision(cat, tmp_path):
    """An engine keeps the record its first request for a durable=false revision carried (no files,
    no digest) and reads it again from the catalog once the staged folder is gone: after a host-cache
    eviction, or as another DP rank's first read. Before the store it says why it cannot."""
    folder = write_peft(tmp_path / "one", rank=2, seed=4)
    handed = {}

    def stage(rev, payload, known):
        handed.update(payload=payload, known=known)
        return rev

    held = publish_files(cat, "rl/p", files_of(folder), stage=staged_by(stage))
    assert (held.durable, held.files) == (False, {})
    with pytest.raises(RevisionNotStored, match="revision 1 of 'rl/p' was published with durable=false"):
        held.local_path()
    cat.store_blobs(held, handed["payload"], handed["known"])
    weights = "adapter_model.safetensors"
    with open(os.path.join(held.local_path(), weights), "rb") as got, open(os.path.join(folder, weights), "rb") as want:
        assert got.read() == want.read()


def test_a_durable_false_revision_may_repeat_content_and_is_counted_once_stored(cat, tmp_path):
    """The check that refuses a revision holding an earlier one's content needs the digest, which a
    durable=false publish takes only after its answer: such a revision is accepted, and once stored
    its blob is shared and counted like any other (verify recounts every reference)."""
    folder = write_peft(tmp_path / "one", rank=2, seed=1)
    first = publish_files(cat, "rl/p", files_of(folder))
    with pytest.raises(Exception, match="already has this exact content"):
        publish_files(cat, "rl/p", files_of(folder))
    handed = {}
    again = publish_files(cat, "rl/p", files_of(folder), stage=staged_by(
        lambda rev, payload, known: handed.update(payload=payload, known=known) or rev))
    assert again.revision == 2 and cat.verify()["ok"]
    stored = cat.store_blobs(again, handed["payload"], handed["known"])
    assert stored.content_digest == first.content_digest and stored.files == first.files
    report = cat.verify()
    assert report["ok"] and report["not_durable"] == [], report
    assert dict(cat.store.referenced_digests())[first.files["adapter_model.safetensors"]] == 2


def test_gc_drops_durable_false_revisions_superseded_before_they_were_stored(cat, tmp_path):
    """An RL loop publishes a durable=false revision every step and the server stores only the
    newest (frontend/staged_revisions.py): the others stay not durable for good. gc drops them once
    older than its grace; it keeps the current one, any stored one, and the revision numbers."""
    first = publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "durable", rank=2, seed=1)))
    handed = {}

    def stage(rev, payload, known):
        handed[rev.revision] = (rev, payload, known)
        return rev

    for step in range(2, 6):
        publish_files(cat, "rl/p", files_of(write_peft(tmp_path / f"step{step}", rank=2, seed=step)),
                      stage=staged_by(stage))
    cat.store_blobs(*handed[3])  # one stored on the way (the store keeps one a minute)
    assert cat.verify()["not_durable"] == ["rl/p@2", "rl/p@4", "rl/p@5"]
    assert cat.gc(3600)["purged_never_stored"] == 0  # younger than the grace: a server may still serve them
    report = cat.gc(0)
    assert report["purged_never_stored"] == 2, report
    assert [r.revision for r in cat.store.revisions("rl/p")] == [1, 3, 5]
    assert cat.resolve("rl/p").revision == 5 and cat.latest_durable("rl/p", 5).revision == 3
    report = cat.verify()
    assert report["ok"] and report["not_durable"] == ["rl/p@5"], report
    with pytest.raises(RevisionNotFound, match="collected by gc before it was stored"):
        cat.store_blobs(*handed[4])  # a store that comes after gc finds no row, and writes nothing
    report = cat.verify()
    assert report["ok"] and report["unreferenced_blobs"] == 0, report
    assert [r.revision for r in cat.store.revisions("rl/p")] == [1, 3, 5]
    nxt = publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "next", rank=2, seed=9)))
    assert nxt.revision == 6 and first.durable


@pytest.mark.parametrize("gc_strikes", ["before the commit", "between exists and touch"])
def test_a_blob_gc_removes_while_a_revision_is_stored_is_written_again(cat, tmp_path, monkeypatch, gc_strikes):
    """store_blobs copies the blobs outside the write lock (the copy and its fsync stay off other
    publishes' commits) and `mint catalog gc` may run meanwhile in another process. Here it runs on
    this thread at the worst moment: once team/a (same bytes) is deleted, its blobs lose their last
    reference just before team/b's commit; or an old orphan with these bytes goes between store_blobs
    seeing it and touching it. Either way the revision must not become durable without its blobs."""
    folder = write_peft(tmp_path / "same", rank=2, seed=1)
    handed, reports = {}, []

    def stage(rev, payload, known):
        handed.update(rev=rev, payload=payload, known=known)
        return rev

    if gc_strikes == "before the commit":
        publish_files(cat, "team/a", files_of(folder))
        cat.delete("team/a")
        publish_files(cat, "team/b", files_of(folder), stage=staged_by(stage))
        commit = cat.store.mark_durable

        def gc_then_commit(*args):
            reports.append(cat.gc(3600))
            return commit(*args)

        monkeypatch.setattr(cat.store, "mark_durable", gc_then_commit)
    else:
        for path in files_of(folder).values():  # left by a publish killed before its commit
            cat.blobs.put(open(path, "rb").read())
        publish_files(cat, "team/b", files_of(folder), stage=staged_by(stage))
        touch = cat.blobs.touch

        def gc_then_touch(digest):
            if not reports:
                reports.append(cat.gc(0))
            touch(digest)

        monkeypatch.setattr(cat.blobs, "touch", gc_then_touch)
    stored = cat.store_blobs(handed["rev"], handed["payload"], handed["known"])
    assert [r["removed_blobs"] for r in reports] == [2]  # gc did take both blobs of these bytes
    assert stored.durable and cat.resolve("team/b") == stored
    for name, path in files_of(folder).items():
        assert cat.blobs.read(stored.files[name]) == open(path, "rb").read()
    report = cat.verify()
    assert report["ok"] and report["not_durable"] == [], report
    assert os.path.isdir(stored.local_path())


def test_rollback_passes_over_revisions_that_were_never_stored(cat, tmp_path):
    """A durable=false revision superseded before its store has no blobs (gc drops it later): rollback
    steps over it to the stored one before, and naming it is refused, so current never points at a
    revision no engine can load."""
    def publish(adapter_id, seed, **kw):
        folder = write_peft(tmp_path / f"{adapter_id}-{seed}", rank=2, seed=seed)
        return publish_files(cat, adapter_id, files_of(folder), **kw)

    never = lambda rev, payload, known: rev  # noqa: E731 - staged, and its store never comes
    first = publish("rl/p", 1)
    publish("rl/p", 2, stage=staged_by(never))
    publish("rl/p", 3)
    back = cat.rollback("rl/p")
    assert (back.revision, back.durable) == (1, True) and back == first and os.path.isdir(back.local_path())
    with pytest.raises(CatalogError, match=r"revision 2 of 'rl/p' is not stored .* stored revisions are 1, 3\b"):
        cat.rollback("rl/p", to=2)
    assert cat.resolve("rl/p") == first
    assert cat.rollback("rl/p", to=3).revision == 3
    publish("rl/q", 4, stage=staged_by(never))
    publish("rl/q", 5)
    with pytest.raises(CatalogError, match=r"cannot roll back 'rl/q': no revision before 2 is stored"):
        cat.rollback("rl/q")
    assert cat.resolve("rl/q").revision == 2


@pytest.mark.parametrize("fails", ["staging", "the record"])
def test_a_durable_false_publish_records_its_revision_with_its_files_staged_or_not_at_all(cat, tmp_path, monkeypatch,
                                                                                          fails):
    """The files are staged (frontend/staged_revisions.py) before the revision is recorded, and the record
    is the commit: staging that fails (shared memory and disk full) records nothing, and was a current
    revision no server held, a revision number spent and a retry with the same expected_revision refused;
    a record refused (a revision number taken meanwhile) leaves nothing staged."""
    import sglang_mint.frontend.staged_revisions as staged_module
    from sglang_mint.frontend.staged_revisions import StagedRevisions

    first = publish_files(cat, "rl/p", files_of(write_peft(tmp_path / "one", rank=2, seed=1)))
    staged = StagedRevisions(str(tmp_path / "shm" / "30009"))
    folder = write_peft(tmp_path / "two", rank=2, seed=2)
    if fails == "staging":
        def full(src, dst):
            raise OSError(28, "No space left on device")
        monkeypatch.setattr(staged_module.shutil, "move", full)
        with pytest.raises(OSError, match="No space left"):
            publish_files(cat, "rl/p", files_of(folder), expect_revision=2, stage=functools.partial(staged.stage, cat))
    else:
        def taken_meanwhile(*args):  # another trainer's revision 2 committed between the check and this commit
            raise RevisionConflict("revision 2 of 'rl/p' already exists (latest is 2)")
        monkeypatch.setattr(cat.store, "publish", taken_meanwhile)
        with pytest.raises(RevisionConflict, match="revision 2 of .rl/p. already exists"):
            publish_files(cat, "rl/p", files_of(folder), expect_revision=2, stage=functools.partial(staged.stage, cat))
    assert cat.resolve("rl/p") == first and [r.revision for r in cat.store.revisions("rl/p")] == [1]
    staging = os.path.join(staged.root, "staged")
    assert not os.path.isdir(staging) or not os.listdir(staging), "nothing left staged"
    monkeypatch.undo()
    again = write_peft(tmp_path / "two-again", rank=2, seed=2)  # staging moved the refused upload's files
    retried = publish_files(cat, "rl/p", files_of(again), expect_revision=2, stage=functools.partial(staged.stage, cat))
    assert (retried.revision, retried.durable, os.path.isdir(retried.staged)) == (2, False, True)
    staged.close()
