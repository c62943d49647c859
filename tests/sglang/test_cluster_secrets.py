"""`mint cluster up` keeps the PostgreSQL password off every command line (issue 19, item 6).

The real CLI in a subprocess: PostgreSQL, moto, SMG and one engine on loopback. Once it is up,
no process it started shows the password in /proc/<pid>/cmdline (``ps`` reads that file to
anyone on the machine); the engine still reads the catalog (it got the password through
PGPASSFILE), and the files holding secrets are 0600.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

from sglang_mint.ports import free_port
from sglang_mint.process import ManagedProcess

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast


def test_cluster_engines_get_the_password_off_the_command_line(tmp_path):
    port = free_port()
    # Its own process group (ManagedProcess): stopping it reaches whatever it left behind.
    cluster = ManagedProcess([sys.executable, "-m", "sglang_mint.cli", "cluster", "up", "--engines", "1",
                              "--catalog-size", "3", "--port", str(port)],
                             name="mint cluster up", log_path=tmp_path / "cluster.log")
    cluster.spawn()
    try:
        assert cluster.wait_until(lambda: "==> up in" in cluster.log_text(), timeout=400), cluster.log_tail(40)
        env_file = Path(f"/tmp/mint-cluster-{os.getuid()}/env")
        env = dict(line.removeprefix("export ").split("=", 1) for line in env_file.read_text().splitlines())
        pgpass = Path(env["PGPASSFILE"])
        password = pgpass.read_text().strip().rsplit(":", 1)[1]
        assert len(password) >= 8
        started = psutil.Process(cluster.pid).children(recursive=True)
        engines = [p for p in started if "sglang.launch_server" in " ".join(p.cmdline())]
        assert engines, [p.cmdline() for p in started]
        for p in [psutil.Process(cluster.pid), *started]:
            cmdline = Path(f"/proc/{p.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            assert password not in cmdline, f"pid {p.pid} shows the password: {cmdline}"
        assert password not in cluster.log_text(), "the password was printed"
        for secret in (env_file, pgpass):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600, (secret, oct(secret.stat().st_mode))
        # The engine opened the catalog without a password in its URL: it serves a catalog adapter.
        body = json.dumps({"model": "synth/0000001", "prompt": "hi", "max_tokens": 2}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert r.status == 200 and json.loads(r.read())["choices"][0]["text"] is not None
    finally:
        cluster.stop(timeout=120)
        time.sleep(0.5)
