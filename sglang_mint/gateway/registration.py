"""An engine joining and leaving a gateway (SMG's ``POST /workers``, ``DELETE /workers/{id}``).

The engine side of ``--mint-gateway``; engine-agnostic (the SGLang glue is
``sglang_mint/sglang/endpoints.py``). For an engine at
``http://10.0.0.5:30000`` and a gateway at ``http://10.0.0.9:30080``:

    joined = GatewayMembership("http://10.0.0.9:30080", "http://10.0.0.5:30000")
    joined.join_when_ready()   # waits for the engine's /health, then POST /workers
    ...
    joined.leave()             # DELETE /workers/<the id SMG gave>

SMG may still be starting when the engine is ready, so joining retries for a
while. Leaving is best effort: an engine that dies without it (``kill -9``) is
found by SMG's health checks instead.

An engine's own exit handlers cannot be relied on to leave: SGLang answers a
SIGTERM to its process group by SIGKILLing itself once it sees its scheduler
gone. So the engine runs this module as a small watcher (``watch_in_background``):

    python -m sglang_mint.gateway.registration GATEWAY ENGINE_URL ENGINE_PID

It joins, then leaves as soon as ENGINE_PID has exited. It is detached from the
engine's process tree (SGLang kills its children) but stays in its process
group and ignores SIGTERM/SIGINT/SIGHUP: a stop or Ctrl-C of the engine ends
the engine, and the watcher then deregisters it; a ``kill -9`` of the group
ends both at once, like a lost machine, and SMG's health checks take over.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

from sglang_mint.process import pid_alive

logger = logging.getLogger("sglang_mint")


class GatewayMembership:
    def __init__(self, gateway_url: str, engine_url: str, *, join_timeout: float = 600.0, poll: float = 0.5):
        self.gateway_url = gateway_url.rstrip("/")
        self.engine_url = engine_url.rstrip("/")
        self.join_timeout = join_timeout
        self.poll = poll
        self.worker_id: str | None = None
        self._left = threading.Event()

    def join_when_ready(self) -> bool:
        """Wait for the engine to answer /health, then register it; False if it never could."""
        deadline = time.monotonic() + self.join_timeout
        while not self._left.is_set() and time.monotonic() < deadline:
            if self._engine_ready() and self._register():
                logger.info("joined gateway %s as %s (worker id %s)", self.gateway_url, self.engine_url,
                            self.worker_id)
                return True
            self._left.wait(self.poll)
        if not self._left.is_set():
            logger.warning("could not join gateway %s within %.0f s; serving without it", self.gateway_url,
                           self.join_timeout)
        return False

    def join_in_background(self) -> threading.Thread:
        thread = threading.Thread(target=self.join_when_ready, name="mint-gateway-join", daemon=True)
        thread.start()
        return thread

    def leave(self, timeout: float = 3.0) -> bool:
        """Deregister (once); True if the gateway confirmed it."""
        self._left.set()
        worker_id, self.worker_id = self.worker_id, None
        if worker_id is None:
            return False
        try:
            _call("DELETE", f"{self.gateway_url}/workers/{worker_id}", timeout=timeout)
            logger.info("left gateway %s", self.gateway_url)
            return True
        except (OSError, ValueError) as exc:
            logger.warning("could not leave gateway %s: %s", self.gateway_url, exc)
            return False

    def _engine_ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.engine_url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def _register(self) -> bool:
        try:
            answer = _call("POST", self.gateway_url + "/workers", {"url": self.engine_url})
        except urllib.error.HTTPError as exc:
            if exc.code == 409:  # already registered (a restart at the same address): take its id
                self.worker_id = self._existing_id()
                return self.worker_id is not None
            logger.warning("gateway %s refused %s: HTTP %s %s", self.gateway_url, self.engine_url, exc.code,
                           exc.read()[:300])
            return False
        except (OSError, ValueError):
            return False  # the gateway is not up yet
        self.worker_id = answer.get("worker_id")
        return self.worker_id is not None

    def _existing_id(self) -> str | None:
        for worker in _call("GET", self.gateway_url + "/workers").get("workers", []):
            if worker.get("url", "").rstrip("/") == self.engine_url:
                return worker.get("id")
        return None


def _call(method: str, url: str, body: dict | None = None, timeout: float = 5.0) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        raw = r.read()
    return json.loads(raw) if raw.strip() else {}


def engine_url(host: str, port: int) -> str:
    """Where the gateway reaches an engine bound to ``host:port``: ``("127.0.0.1", 30000)`` ->
    ``http://127.0.0.1:30000``; a wildcard host (``0.0.0.0``) becomes this machine's host name."""
    import socket

    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def watch(gateway_url: str, engine_url: str, engine_pid: int, poll: float = 0.25) -> int:
    """Join once the engine is ready, leave once ``engine_pid`` has exited."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    membership = GatewayMembership(gateway_url, engine_url)
    joiner = membership.join_in_background()
    while pid_alive(engine_pid):
        time.sleep(poll)
    membership.leave()
    joiner.join(timeout=1)
    return 0


def watch_in_background(gateway_url: str, engine_url: str, engine_pid: int | None = None) -> None:
    """Start the watcher outside this process's tree (a shell that exits at once is its parent).

    Not a ``sglang_mint.process.ManagedProcess``: nothing stops it, and it must stay in the
    engine's process group, where it outlives the engine by design."""
    import shlex

    cmd = [sys.executable, "-m", __name__, gateway_url, engine_url, str(engine_pid or os.getpid())]
    subprocess.run(["/bin/sh", "-c", " ".join(map(shlex.quote, cmd)) + " &"], check=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3 or not argv[2].isdigit():
        print("usage: python -m sglang_mint.gateway.registration GATEWAY_URL ENGINE_URL ENGINE_PID", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s] mint-gateway-watch: %(message)s")
    return watch(argv[0], argv[1], int(argv[2]))


if __name__ == "__main__":
    sys.exit(main())
