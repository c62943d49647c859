"""The shared-memory inbox (frontend/staged_revisions.py): what a trainer on this machine may hand over.

The inbox token and the folder behind it are written by the caller, so each is checked before a
byte is read: a name that is not one this server hands out, a path out of the inbox, a symlink, a
pickle, too many files, too many bytes. A real folder under a temp root stands in for /dev/shm.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import types
import uuid

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.catalog.upload_stream import BodyRefused
from sglang_mint.client.handoff import Inbox
from sglang_mint.frontend.staged_revisions import StagedRevisions
from sglang_mint.process import process_identity

WHERE = "upload for 'rl/p'"


@pytest.fixture
def staged(tmp_path):
    return StagedRevisions(str(tmp_path / "shm" / "30000"))


def put(staged, files: dict[str, bytes]) -> str:
    return Inbox(staged.inbox).put({name: [data] for name, data in files.items()})


def test_the_files_a_trainer_wrote_are_moved_out_of_the_inbox(staged):
    token = put(staged, {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 10})
    folder, files = staged.take(token, 1 << 20, WHERE)
    assert sorted(files) == ["adapter_config.json", "adapter_model.safetensors"]
    assert not os.path.exists(os.path.join(staged.inbox, token))  # the trainer can no longer change them
    assert open(files["adapter_model.safetensors"], "rb").read() == b"x" * 10
    assert os.path.dirname(files["adapter_config.json"]) == folder


@pytest.mark.parametrize("token", ["../../etc", "0" * 31, "g" * 32, "/" + "0" * 31, ""])
def test_a_token_that_is_not_an_inbox_folder_name_is_refused(staged, token):
    with pytest.raises(BodyRefused) as exc:
        staged.take(token, 1 << 20, WHERE)
    assert exc.value.http_status == 400 and "32 hex digits" in str(exc.value)


def test_a_folder_that_is_not_there_or_a_symlink_is_refused(staged, tmp_path):
    with pytest.raises(BodyRefused, match="has no folder"):
        staged.take(uuid.uuid4().hex, 1 << 20, WHERE)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    token = uuid.uuid4().hex
    os.symlink(elsewhere, os.path.join(staged.inbox, token))
    with pytest.raises(BodyRefused, match="not a folder"):
        staged.take(token, 1 << 20, WHERE)


def test_a_symlinked_file_a_pickle_or_too_much_is_refused(staged, tmp_path):
    token = put(staged, {"adapter_config.json": b"{}"})
    secret = tmp_path / "secret"
    secret.write_bytes(b"not yours")
    os.symlink(secret, os.path.join(staged.inbox, token, "adapter_model.safetensors"))
    with pytest.raises(BodyRefused, match="not a regular file"):
        staged.take(token, 1 << 20, WHERE)
    with pytest.raises(InvalidAdapter, match="pickle"):
        staged.take(put(staged, {"adapter_model.bin": b"x"}), 1 << 20, WHERE)
    with pytest.raises(BodyRefused) as exc:
        staged.take(put(staged, {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 100}), 50, WHERE)
    assert exc.value.http_status == 413 and "--mint-max-upload-bytes" in str(exc.value)


def test_a_refused_inbox_folder_leaves_nothing_in_shared_memory(staged):
    # Refused after it was moved out of the inbox, the folder stayed in uploads/ (RAM) until the server stopped.
    refused = [{"notes.txt": b"x" * 1000}, {"adapter_model.bin": b"x"}, {f"{i}.json": b"x" for i in range(5)},
               {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 100}]
    for files in refused:
        with pytest.raises((BodyRefused, InvalidAdapter)):
            staged.take(put(staged, files), 50, WHERE)
    assert os.listdir(staged.inbox) == [] and os.listdir(os.path.join(staged.root, "uploads")) == []


def test_a_new_frontend_clears_what_a_killed_one_left(tmp_path):
    root = str(tmp_path / "shm" / "30000")
    token = put(StagedRevisions(root), {"adapter_config.json": b"{}"})
    assert os.path.isdir(os.path.join(root, "inbox", token))
    StagedRevisions(root)
    assert os.listdir(os.path.join(root, "inbox")) == []
    assert oct(os.stat(os.path.join(root, "inbox")).st_mode & 0o777) == "0o700"


@pytest.mark.parametrize("planted", ["parent-open", "parent-symlink", "root-open"])
def test_a_root_another_user_could_change_is_not_used(tmp_path, planted, caplog):
    """/dev/shm/sglang-mint-<uid>/<port> has a name anyone can guess, in a folder anyone can write:
    a user who made it first, open to others (or a symlink to a folder of theirs), could swap the
    files of an upload or a staged revision for weights of their own. Shared memory is then not
    used at all: uploads go to the catalog's disk, and there is no inbox."""
    import logging

    parent, elsewhere = tmp_path / "shm", tmp_path / "theirs"
    elsewhere.mkdir(mode=0o700)
    if planted == "parent-open":
        parent.mkdir()
        parent.chmod(0o777)
    elif planted == "parent-symlink":
        parent.symlink_to(elsewhere)
    else:
        (parent / "30000").mkdir(parents=True)
        (parent / "30000").chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="sglang_mint"):
        staged = StagedRevisions(str(parent / "30000"))
    assert (staged.root, staged.inbox) == ("", None)
    assert staged.receive_folder(1000, "/catalog/uploads") == "/catalog/uploads"
    [warning] = [r.getMessage() for r in caplog.records]
    assert "not using shared memory" in warning and str(parent) in warning
    assert not any(os.scandir(elsewhere))  # nothing written where the link led


def test_the_root_is_this_users_alone(tmp_path):
    staged = StagedRevisions(str(tmp_path / "shm" / "30000"))
    for folder in (os.path.dirname(staged.root), staged.root, staged.inbox):
        info = os.lstat(folder)
        assert (info.st_uid, oct(info.st_mode & 0o777)) == (os.getuid(), "0o700"), folder


def test_a_frontend_names_itself_in_its_root_and_removes_the_root_when_it_closes(tmp_path):
    root = str(tmp_path / "shm" / "30000")
    staged = StagedRevisions(root)
    put(staged, {"adapter_config.json": b"{}"})
    assert open(os.path.join(root, "owner")).read() == process_identity(os.getpid())
    staged.close()
    assert not os.path.exists(root)


def test_a_starting_frontend_removes_the_roots_of_frontends_that_are_gone(tmp_path):
    parent = tmp_path / "shm"

    def root(port: int, owner: str | None, age_s: float = 0) -> str:
        folder = parent / str(port)
        (folder / "staged" / "0").mkdir(parents=True)
        (folder / "staged" / "0" / "adapter_model.safetensors").write_bytes(b"x" * 1000)
        if owner is not None:
            (folder / "owner").write_text(owner)
        for path in (folder / "staged" / "0" / "adapter_model.safetensors", folder / "staged" / "0",
                     folder / "staged", *([folder / "owner"] if owner else []), folder):
            os.utime(path, (time.time() - age_s, time.time() - age_s))
        return str(folder)

    child = subprocess.Popen(["sleep", "30"])
    killed = process_identity(child.pid)
    child.kill()
    zombie = subprocess.Popen(["sleep", "30"])
    unreaped = process_identity(zombie.pid)
    zombie.kill()  # not waited for: a zombie until the end of the test, as a killed server is
    child.wait()
    while open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.01)
    mine = process_identity(os.getpid())
    gone = [root(30001, killed),  # killed: its pid is dead
            root(30006, unreaped),  # killed, its exit status not yet collected
            root(30002, f"{os.getpid()} 1"),  # our pid, another start time: a process that had our pid
            root(30003, None, age_s=2 * 24 * 3600)]  # an older version's, unchanged for two days
    kept = [root(30004, mine), root(30005, None, age_s=60)]  # alive; an older version's, changed lately

    StagedRevisions(str(parent / "30000"))

    assert sorted(os.listdir(parent)) == ["30000", "30004", "30005"]
    assert not any(os.path.exists(r) for r in gone)
    zombie.wait()
    assert all(os.path.exists(os.path.join(r, "staged", "0", "adapter_model.safetensors")) for r in kept)


class StandInCatalog:
    """What the store thread calls: records (adapter id, revision, the storing thread's nice value,
    the file names, the digests handed on) for each store. The thread is what these tests test;
    tests/sglang/test_durable_later.py stores through a real server and catalog."""

    def __init__(self, tmp_path):
        self.views = str(tmp_path / "views")
        self.stored = []

    def store_blobs(self, rev, payload, known):
        self.stored.append((rev.adapter_id, rev.revision, os.getpriority(os.PRIO_PROCESS, 0), sorted(payload), known))
        return rev


def not_durable(adapter_id: str, revision: int):
    from sglang_mint.catalog.store import Revision

    return Revision(adapter_id, revision, 0.0, "peft", 2, 2.0, "q_proj", "float32", 2, "{}", "", "{}", durable=False)


def wait_for(condition, timeout=HUNG_AFTER_S):
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)
    return condition()


def test_blobs_are_hashed_and_stored_at_the_lowest_cpu_priority(staged, tmp_path, monkeypatch):
    """The store thread (hashing, copying, fsync) yields the CPU to the engine's serving."""
    import sglang_mint.frontend.staged_revisions as module

    monkeypatch.setattr(module, "STORE_AFTER_S", 0.0)
    mine = os.getpriority(os.PRIO_PROCESS, 0)  # this thread's (19 in make test's fast lane)
    catalog = StandInCatalog(tmp_path)
    staged.stage(catalog, {"adapter_config.json": b"{}"}, {"adapter_config.json": "0" * 64}).serve(
        not_durable("rl/p", 1))
    assert wait_for(lambda: catalog.stored)
    assert catalog.stored == [("rl/p", 1, 19, ["adapter_config.json"], {"adapter_config.json": "0" * 64})]
    assert os.getpriority(os.PRIO_PROCESS, 0) == mine  # this thread, and so the serving ones, untouched


@pytest.mark.parametrize("max_unstored_s, expected", [(60.0, [("rl/p", 3), ("rl/q", 1)]),
                                                       (0.0, [("rl/p", 1), ("rl/p", 2), ("rl/p", 3), ("rl/q", 1)])])
def test_a_revision_superseded_before_its_store_is_not_stored(tmp_path, monkeypatch, max_unstored_s, expected):
    """An RL loop publishing faster than STORE_AFTER_S: only each adapter's newest revision is stored,
    unless the adapter went MAX_UNSTORED_S without a store. A superseded revision is served from its
    staged folder until the grace period ends, then not at all (nothing of it was stored)."""
    import sglang_mint.frontend.staged_revisions as module

    # The module's clock stands still unless the test moves it, and the store thread's wait of
    # STORE_AFTER_S ends when the test says: the four are staged "within it" however slowly they are.
    clock, store_after, slept = [time.monotonic()], threading.Event(), []

    def sleep(seconds):
        slept.append(seconds)
        store_after.wait(HUNG_AFTER_S)

    monkeypatch.setattr(module, "time", types.SimpleNamespace(monotonic=lambda: clock[0], time=time.time, sleep=sleep))
    monkeypatch.setattr(module, "MAX_UNSTORED_S", max_unstored_s)
    staged = StagedRevisions(str(tmp_path / "shm" / "30001"), grace_s=0.2)
    catalog = StandInCatalog(tmp_path)
    folders = []
    for adapter_id, n in [("rl/p", 1), ("rl/p", 2), ("rl/q", 1), ("rl/p", 3)]:
        folders.append(staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable(adapter_id, n)).staged)
    assert staged.get("rl/p", 1) is not None  # served from memory meanwhile
    store_after.set()
    assert wait_for(lambda: staged.stored_total + staged.superseded_total == 4), catalog.stored  # all four handled
    assert slept[0] == module.STORE_AFTER_S  # the first waited STORE_AFTER_S after its answer, on the module's clock
    assert sorted(s[:2] for s in catalog.stored) == expected
    assert staged.superseded_total == 4 - len(expected)
    if max_unstored_s:
        assert staged.get("rl/p", 1) is not None  # superseded, and still served until its grace ends
        clock[0] += 1.0  # past grace_s
        assert wait_for(lambda: staged.get("rl/p", 1) is None and staged.get("rl/p", 2) is None)
        # their staged folders (the first two staged) go with them
        assert wait_for(lambda: not any(os.path.exists(folder) for folder in folders[:2]))
    staged.close()


def test_an_adapter_with_nothing_staged_leaves_no_bookkeeping(tmp_path, monkeypatch):
    """A server publishing for many adapters over days keeps state only for those staged now."""
    import sglang_mint.frontend.staged_revisions as module

    class HeldBack(StandInCatalog):  # stores nothing until the test lets it: the 20 are staged first
        go = threading.Event()

        def store_blobs(self, rev, payload, known):
            assert self.go.wait(HUNG_AFTER_S)
            return super().store_blobs(rev, payload, known)

    monkeypatch.setattr(module, "STORE_AFTER_S", 0.0)
    staged = StagedRevisions(str(tmp_path / "shm" / "30002"), grace_s=0.1)
    catalog = HeldBack(tmp_path)
    for i in range(20):
        staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable(f"rl/p{i}", 1))
    assert len(staged._newest) == 20
    catalog.go.set()
    assert wait_for(lambda: len(catalog.stored) == 20 and not staged._records)
    assert wait_for(lambda: not staged._newest and not staged._unstored_since), (staged._newest, staged._unstored_since)
    staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable("rl/p0", 2))  # and starts again
    assert wait_for(lambda: len(catalog.stored) == 21) and catalog.stored[-1][:2] == ("rl/p0", 2)
    staged.close()


def test_a_revision_collected_before_its_store_is_not_a_failure(tmp_path, monkeypatch, caplog):
    """`mint catalog gc` may drop a durable=false revision before the store thread gets to it (its
    adapter deleted, or superseded): Catalog.store_blobs then raises RevisionNotFound and writes
    nothing (tests/catalog/test_upload_files.py), which is said at INFO, not counted as a failure.
    Nothing will read the revision again, so its staged folder (up to SHM_UPLOAD_MAX_BYTES of shared
    memory) and its record go at once, not after a grace period (60 s here, longer than the test)."""
    import logging

    import sglang_mint.frontend.staged_revisions as module
    from sglang_mint.catalog.errors import RevisionNotFound

    class Collected(StandInCatalog):
        def store_blobs(self, rev, payload, known):
            raise RevisionNotFound(f"revision {rev.revision} of {rev.adapter_id!r} was collected by gc before "
                                   "it was stored")

    def slow_info(*args, **kwargs):  # the store thread slowed where it says so: the count waited for comes after
        time.sleep(0.3)
        say(*args, **kwargs)

    monkeypatch.setattr(module, "STORE_AFTER_S", 0.0)
    say = module.logger.info
    monkeypatch.setattr(module.logger, "info", slow_info)
    staged = StagedRevisions(str(tmp_path / "shm" / "30003"), grace_s=60.0)
    with caplog.at_level(logging.INFO, logger=module.logger.name):
        served = staged.stage(Collected(tmp_path), {"adapter_config.json": b"{}"}, {}).serve(
            not_durable("rl/p", 1))
        assert os.path.isdir(served.staged) and staged.get("rl/p", 1) is served
        assert wait_for(lambda: staged.collected_total == 1)
    assert staged.failed_total == 0 and staged.stored_total == 0
    assert staged.get("rl/p", 1) is None and not os.path.exists(served.staged)
    assert not staged._newest and not staged._unstored_since and not staged._expiring
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("INFO", "not storing rl/p@1: revision 1 of 'rl/p' was collected by gc before it was stored")]
    staged.close()


def test_a_root_an_older_version_left_open_to_reading_is_closed(tmp_path):
    """Versions before d5f9e15 made /dev/shm/sglang-mint-<uid>/<port> with the default mode (0o755 under
    umask 022), and /dev/shm lives until reboot: the root was used as it was, and any local user could
    read every tenant's weights staged in it (staged/<n>/ and its files are 0o755 and 0o644)."""
    parent = tmp_path / "shm"
    (parent / "30000").mkdir(parents=True)
    for folder in (parent, parent / "30000"):
        folder.chmod(0o755)
    staged = StagedRevisions(str(parent / "30000"))
    assert staged.root == str(parent / "30000")
    for folder in (parent, parent / "30000"):
        assert oct(os.lstat(folder).st_mode & 0o777) == "0o700", folder


def test_a_folder_swapped_for_a_symlink_between_the_look_and_the_move_is_refused(staged, tmp_path, monkeypatch):
    """take() looked at inbox/<token> (a folder of this user), then renamed it: a symlink put there in
    between was moved instead, and the files of the folder it named (another tenant's staged revision,
    an adapter folder) were published; with durable=false, moved out of that folder."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "adapter_config.json").write_bytes(b'{"theirs": 1}')
    token = put(staged, {"adapter_config.json": b"{}"})
    real_rename = os.rename

    def swapped_first(source, target):
        if source == os.path.join(staged.inbox, token):
            os.remove(os.path.join(source, "adapter_config.json"))
            os.rmdir(source)
            os.symlink(theirs, source)
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", swapped_first)
    with pytest.raises(BodyRefused, match="not a folder"):
        staged.take(token, 1 << 20, WHERE)
    monkeypatch.undo()
    assert (theirs / "adapter_config.json").read_bytes() == b'{"theirs": 1}'
    assert os.listdir(staged.inbox) == [] and os.listdir(os.path.join(staged.root, "uploads")) == []


def test_a_folder_taken_by_another_request_meanwhile_is_a_400(staged, monkeypatch):
    # Two publishes naming one folder: the second found it, then its rename found nothing (a 500).
    token = put(staged, {"adapter_config.json": b"{}"})
    real_rename = os.rename

    def taken_first(source, target):
        os.rename = real_rename
        staged.take(token, 1 << 20, WHERE)
        return real_rename(source, target)

    monkeypatch.setattr(os, "rename", taken_first)
    with pytest.raises(BodyRefused, match="has no folder"):
        staged.take(token, 1 << 20, WHERE)


def test_what_a_killed_trainer_left_in_the_inbox_goes_at_the_next_take(staged):
    """A trainer killed between writing its files and its publish request (or while writing them)
    left them in the inbox, RAM, until the server stopped. Folders unchanged for INBOX_STALE_S go
    when the next publish takes a folder; a fresh one stays."""
    import sglang_mint.frontend.staged_revisions as module

    left = put(staged, {"adapter_config.json": b"{}", "adapter_model.safetensors": b"x" * 1000})
    fresh = put(staged, {"adapter_config.json": b"{}"})
    old = time.time() - module.INBOX_STALE_S - 60
    for path in (os.path.join(staged.inbox, left, name) for name in ("adapter_config.json",
                                                                        "adapter_model.safetensors", "")):
        os.utime(path, (old, old))
    staged.take(put(staged, {"adapter_config.json": b"{}"}), 1 << 20, WHERE)
    assert os.listdir(staged.inbox) == [fresh]


def test_a_durable_false_upload_received_on_disk_is_not_copied_into_shared_memory(tmp_path, monkeypatch):
    """An upload over SHM_UPLOAD_MAX_BYTES is received on the catalog's disk "so a large upload does
    not sit in RAM"; stage() then moved it into <root>/staged, a copy into /dev/shm of up to
    --mint-max-upload-bytes (4 GiB) with no room check, kept there until it was stored."""
    import sglang_mint.frontend.staged_revisions as module

    monkeypatch.setattr(module, "SHM_UPLOAD_MAX_BYTES", 1000)
    monkeypatch.setattr(module, "STAGE_SMALL_BYTES", 100, raising=False)  # the config, not the weights
    monkeypatch.setattr(module, "STORE_AFTER_S", 3600.0)  # not stored during the test
    staged = StagedRevisions(str(tmp_path / "shm" / "30000"))
    disk = tmp_path / "catalog" / "uploads"
    assert staged.receive_folder(5000, str(disk)) == str(disk)
    disk.mkdir(parents=True)
    (disk / "0").write_bytes(b"x" * 5000)
    catalog = StandInCatalog(tmp_path / "catalog")
    payload = {"adapter_config.json": b"{}", "adapter_model.safetensors": str(disk / "0")}
    served = staged.stage(catalog, payload, {}).serve(not_durable("rl/p", 1))
    assert not served.staged.startswith(staged.root + os.sep), served.staged
    assert open(os.path.join(served.staged, "adapter_model.safetensors"), "rb").read() == b"x" * 5000
    small = staged.receive_folder(500, str(disk))  # one received in shared memory stays there: a rename
    os.makedirs(small)
    with open(os.path.join(small, "0"), "wb") as f:
        f.write(b"y" * 500)
    payload = {"adapter_config.json": b"{}", "adapter_model.safetensors": os.path.join(small, "0")}
    served = staged.stage(catalog, payload, {}).serve(not_durable("rl/p", 2))
    assert served.staged.startswith(staged.root + os.sep), served.staged
    staged.close()


def test_a_revision_whose_store_failed_goes_once_a_newer_one_is_stored(tmp_path, monkeypatch):
    """A store that fails (the catalog's disk full) leaves the revision served by this server alone, from
    its staged folder. Once a newer revision of the adapter is stored, the failed one is nobody's current
    revision: its folder (up to SHM_UPLOAD_MAX_BYTES of shared memory) goes after the grace period, as a
    superseded one's does, instead of staying until the server stops."""
    import sglang_mint.frontend.staged_revisions as module

    class FullOnce(StandInCatalog):
        failed = False

        def store_blobs(self, rev, payload, known):
            if not self.failed:
                self.failed = True
                raise OSError(28, "No space left on device")
            return super().store_blobs(rev, payload, known)

    monkeypatch.setattr(module, "STORE_AFTER_S", 0.0)
    monkeypatch.setattr(module, "MAX_UNSTORED_S", 0.0)  # every revision is stored, none superseded
    staged = StagedRevisions(str(tmp_path / "shm" / "30004"), grace_s=0.1)
    catalog = FullOnce(tmp_path)
    first = staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable("rl/p", 1))
    assert wait_for(lambda: staged.failed_total == 1)
    assert staged.get("rl/p", 1) is first and os.path.isdir(first.staged)  # still served here meanwhile
    staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable("rl/q", 1))  # another adapter's
    assert wait_for(lambda: staged.stored_total == 1)
    time.sleep(0.3)
    assert staged.get("rl/p", 1) is first and os.path.isdir(first.staged)
    staged.stage(catalog, {"adapter_config.json": b"{}"}, {}).serve(not_durable("rl/p", 2))
    assert wait_for(lambda: staged.stored_total == 2)
    assert wait_for(lambda: staged.get("rl/p", 1) is None and not os.path.exists(first.staged))
    staged.close()


def test_two_servers_of_one_catalog_stage_on_its_disk_side_by_side(tmp_path):
    """A publish that does not fit in shared memory (or a server without it) is staged under the catalog's
    ``staged-uploads/``, which every server of the catalog on the machine shares, and a restarted server
    finds what a killed one left there: each numbered its folders from 0, so the second server's first such
    publish failed (FileExistsError, a 500) while the first one's folder 0 was there."""
    catalog = StandInCatalog(tmp_path)
    one, two = StagedRevisions(""), StagedRevisions("")  # no shared memory: staged on the catalog's disk
    first = one.stage(catalog, {"adapter_config.json": b"{}"}, {})
    second = two.stage(catalog, {"adapter_config.json": b"[]"}, {})
    assert first.folder != second.folder
    assert [open(s.files["adapter_config.json"], "rb").read() for s in (first, second)] == [b"{}", b"[]"]
    first.discard()
    second.discard()
