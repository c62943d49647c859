"""``mint cluster down`` exits 1 while the cluster is still stopping after --timeout, 0 once it
has stopped. The cluster is played by a child process named in the state file that
``mint cluster up`` writes: one that ignores SIGTERM, and one that ends on it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.cli import main as cli_main
from sglang_mint.dev.cluster import state_file

IGNORES_SIGTERM = ("import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); "
                   "time.sleep(60)")
ENDS_ON_SIGTERM = "import time; print('ready', flush=True); time.sleep(60)"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    """start(code): a stand-in cluster process, named in the state file; killed at the end."""
    monkeypatch.setenv("MINT_CACHE_DIR", str(tmp_path))
    started = []

    def start(code: str) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
        started.append(proc)
        assert proc.stdout.readline() == "ready\n"  # its SIGTERM handler is in place
        threading.Thread(target=proc.wait, daemon=True).start()  # reaped as it ends: no zombie looks alive
        state_file().parent.mkdir(parents=True, exist_ok=True)
        state_file().write_text(json.dumps({"pid": proc.pid}))
        return proc

    yield start
    for proc in started:
        proc.kill()
        proc.wait(timeout=HUNG_AFTER_S)


def test_a_cluster_still_stopping_after_the_timeout_exits_1(cluster, capsys):
    proc = cluster(IGNORES_SIGTERM)
    assert cli_main(["cluster", "down", "--timeout", "1"]) == 1
    assert f"cluster (pid {proc.pid}) still stopping after 1 s" in capsys.readouterr().out


def test_a_cluster_that_stops_exits_0(cluster, capsys):
    proc = cluster(ENDS_ON_SIGTERM)
    assert cli_main(["cluster", "down", "--timeout", "30"]) == 0
    assert "cluster stopped" in capsys.readouterr().out
    # ended by the SIGTERM (wait, not poll: poll answers None while the reaping thread holds the lock)
    assert proc.wait(timeout=HUNG_AFTER_S) == -signal.SIGTERM
