"""``mint cluster up`` / ``mint cluster down``: N engines behind SMG on loopback, one shared catalog.

    mint cluster up --engines 2          # Ctrl-C (or `mint cluster down`) stops everything
    ==> gateway http://127.0.0.1:30080/v1 (smg, consistent_hashing on the adapter id)
    ==> client: openai.OpenAI(base_url="http://127.0.0.1:30080/v1").completions.create(model="demo/tiny-0000", ...)

What it starts, in order: SMG with the adapter-route middleware
(``sglang_mint.gateway``), then the engines (tiny CPU model, ``--sleep-on-idle``,
``--mint-gateway``), which register themselves. The catalog is a folder (SQLite +
blobs) shared by all engines, valid on one machine; ``--catalog
postgresql://...`` hands a PostgreSQL catalog to every engine instead.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from sglang_mint.dev.cpu_env import default_cache_dir
from sglang_mint.errors import MintError


def state_file() -> Path:
    return default_cache_dir() / "cluster.json"


def run_cluster(engines: int, port: int, catalog: str | None, catalog_size: int) -> int:
    from sglang_mint.dev.demo import demo_assets, demo_catalog
    from sglang_mint.dev.server import SGLangServer
    from sglang_mint.gateway.smg import SMGGateway

    if engines < 1:
        raise MintError(f"--engines must be at least 1, got {engines}")
    if state_file().exists() and _alive(json.loads(state_file().read_text()).get("pid")):
        raise MintError(f"a cluster is already running ({state_file()}); stop it with `mint cluster down`")
    model, adapters = demo_assets()
    catalog = catalog or str(demo_catalog(model, adapters, catalog_size))
    run_dir = Path(f"/tmp/mint-cluster-{os.getuid()}")  # SMG refuses middleware files under /root/
    run_dir.mkdir(exist_ok=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    gateway = SMGGateway(port, log_path=run_dir / "smg.log").start()
    servers: list[SGLangServer] = []
    try:
        state_file().write_text(json.dumps({"pid": os.getpid(), "gateway": gateway.url}))
        gateway.install_adapter_route("tiny")
        print(f"==> gateway {gateway.url} (smg, consistent_hashing on the adapter id; log {gateway.log_path})")
        print(f"==> catalog {catalog}")
        print(f"==> starting {engines} engines (CPU, about 30 s each)", flush=True)
        servers = [SGLangServer(model, extra_args=["--mint-catalog", catalog, "--mint-gateway", gateway.url],
                                log_path=run_dir / f"engine{i}.log") for i in range(engines)]
        starters = [threading.Thread(target=s.start) for s in servers]
        [t.start() for t in starters]
        [t.join() for t in starters]
        gateway.wait_for_workers({s.url for s in servers if s.proc and s.proc.poll() is None}, timeout=60)
        for s in servers:
            print(f"    engine {s.url}  /mint/status  (log {s.log_path})")
        first = next(iter(adapters))
        print(f"\n==> client contract: the adapter id in `model`, through the gateway\n"
              f"    openai.OpenAI(base_url=\"{gateway.openai_url}\", api_key=\"none\")"
              f".completions.create(model=\"demo/{first}\", prompt=\"hi\", max_tokens=8)\n"
              f"    curl {gateway.openai_url}/completions -H 'content-type: application/json' "
              f"-d '{{\"model\": \"synth/0000042\", \"prompt\": \"hi\", \"max_tokens\": 8}}'\n"
              f"==> running; Ctrl-C or `mint cluster down` stops it", flush=True)
        while not stop.is_set():
            if all(s.proc.poll() is not None for s in servers):
                print("==> every engine has exited", file=sys.stderr)
                break
            stop.wait(1.0)
    finally:
        print("==> stopping engines and gateway", flush=True)
        stoppers = [threading.Thread(target=s.stop) for s in servers]
        [t.start() for t in stoppers]
        [t.join() for t in stoppers]
        gateway.stop()
        state_file().unlink(missing_ok=True)
    return 0


def stop_cluster(timeout: float = 60.0) -> int:
    if not state_file().exists():
        print("no cluster is running")
        return 0
    pid = json.loads(state_file().read_text()).get("pid")
    if not _alive(pid):
        state_file().unlink(missing_ok=True)
        print("no cluster is running (removed a stale state file)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    print("cluster stopped" if not _alive(pid) else f"cluster (pid {pid}) still stopping after {timeout:.0f} s")
    return 0


def _alive(pid) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
