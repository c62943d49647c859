"""Building the gateway middleware when several processes want it at once.

``build_adapter_route`` caches the built component under one name; two builders that start
together (engines, tests, ``mint cluster up``) must both end with the whole file. The builder
here is a stand-in for componentize-py that writes its output slowly, so the two writes overlap:
what is tested is the cache's publish (each builder writes its own partial file, then renames it
into place), not the compiler.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import stat
import sys
import time

import pytest

from hung import HUNG_AFTER_S
from sglang_mint.gateway import middleware

CHUNKS, CHUNK_BYTES = 20, 50_000
SLOW_BUILDER = f"""#!{sys.executable}
import os, sys, time
out = sys.argv[sys.argv.index("-o") + 1]
with open(out, "wb") as f:
    for i in range({CHUNKS}):
        f.write(bytes([i]) * {CHUNK_BYTES})
        f.flush()
        if os.environ.get("SLOW_BUILDER_STARTED"):  # the kill test's builder: mark, then wait for the kill
            open(os.environ["SLOW_BUILDER_STARTED"], "a").close()
            time.sleep(3600)
        time.sleep(0.02)
"""
WHOLE = b"".join(bytes([i]) * CHUNK_BYTES for i in range(CHUNKS))


@pytest.fixture
def slow_builder(tmp_path, monkeypatch):
    exe = tmp_path / "componentize-py"
    exe.write_text(SLOW_BUILDER)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr(middleware, "componentize_py", lambda: str(exe))
    return exe


def build_in_own_group(cache_dir: str, results) -> None:
    os.setpgrp()  # so that killing the group kills the builder's compiler too
    build(cache_dir, results)


def build(cache_dir: str, results) -> None:
    try:
        results.put(("ok", str(middleware.build_adapter_route("tiny", cache_dir=cache_dir))))
    except Exception as exc:  # reported to the test
        results.put(("error", f"{type(exc).__name__}: {exc}"))


def test_two_builders_at_once_both_get_the_whole_component(slow_builder, tmp_path):
    ctx = multiprocessing.get_context("fork")  # the stand-in builder is patched in before the fork
    results = ctx.Queue()
    builders = [ctx.Process(target=build, args=(str(tmp_path / "cache"), results)) for _ in range(2)]
    for p in builders:
        p.start()
    outcomes = [results.get(timeout=HUNG_AFTER_S) for _ in builders]
    for p in builders:
        p.join(timeout=HUNG_AFTER_S)
    assert [kind for kind, _ in outcomes] == ["ok", "ok"], outcomes
    [path] = {path for _, path in outcomes}
    with open(path, "rb") as f:
        assert f.read() == WHOLE
    assert os.listdir(tmp_path / "cache") == [os.path.basename(path)]  # no partial file left behind


def test_a_builder_killed_mid_write_leaves_no_component(slow_builder, tmp_path, monkeypatch):
    started = tmp_path / "started"
    monkeypatch.setenv("SLOW_BUILDER_STARTED", str(started))
    ctx = multiprocessing.get_context("fork")
    victim = ctx.Process(target=build_in_own_group, args=(str(tmp_path / "cache"), ctx.Queue()))
    victim.start()
    deadline = time.monotonic() + HUNG_AFTER_S  # a forked builder at nice 19 may start late, not never
    while not started.exists():
        assert time.monotonic() < deadline, "the builder never started writing"
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.join(timeout=HUNG_AFTER_S)
    left = os.listdir(tmp_path / "cache")
    assert len(left) == 1 and left[0].endswith(f".{victim.pid}.partial"), left  # its half-written file
    # Nothing under the component's own name: the next builder builds it whole, and sweeps the
    # partial file of the builder that is gone.
    monkeypatch.delenv("SLOW_BUILDER_STARTED")
    path = middleware.build_adapter_route("tiny", cache_dir=str(tmp_path / "cache"))
    assert path.read_bytes() == WHOLE
    assert os.listdir(tmp_path / "cache") == [path.name]
