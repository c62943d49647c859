"""``mint cluster up`` / ``mint cluster down``: N engines behind SMG on loopback, one shared catalog.

    mint cluster up --engines 2          # Ctrl-C (or `mint cluster down`) stops everything
    ==> postgresql postgresql://postgres:***@127.0.0.1:41234/mint (ready in 3.1 s)
    ==> object store http://127.0.0.1:43210 (moto, S3 API; bucket s3://mint-adapters/catalog)
    ==> gateway http://127.0.0.1:30080/v1 (smg, consistent_hashing on the adapter id)
    ==> client: openai.OpenAI(base_url="http://127.0.0.1:30080/v1").completions.create(model="demo/tiny-0000", ...)

What it starts, in order, all on 127.0.0.1:
1. PostgreSQL (``PostgresServer``: a throwaway cluster, fsync on, a random password);
2. an S3-compatible object store (``S3Server``: moto's standalone server);
3. the catalog: database ``mint`` with blobs at ``s3://mint-adapters/catalog``, holding
   ``demo/tiny-000N`` (tiny PEFT adapters) and ``--catalog-size`` synthetic ``synth/NNNNNNN``;
4. SMG with the adapter-route middleware (``sglang_mint.gateway``);
5. the engines (tiny CPU model, ``--sleep-on-idle``, ``--mint-gateway``), which register
   themselves. Each gets only ``--mint-catalog postgresql://postgres@...`` (no password: a
   command line is visible to anyone on the machine in ``ps``), ``PGPASSFILE`` naming a
   mode-0600 password file, and the AWS_* variables that point at the object store, as
   engines on other machines would.

Stopping goes in reverse: engines (they deregister), SMG, the object store, PostgreSQL
(its data goes with it), then the temp folder of engine caches. Logs stay in
``/tmp/mint-cluster-<uid>/`` until the next ``up``. ``--catalog DIR|URL`` serves an
existing catalog instead and starts neither PostgreSQL nor the object store.

For other shells, ``up`` writes ``/tmp/mint-cluster-<uid>/env`` (the AWS_* variables,
``PGPASSFILE`` holding the password, a catalog cache folder), so that
``. /tmp/mint-cluster-0/env && mint catalog publish postgresql://postgres@127.0.0.1:41234/mint acme/bot ./peft``
publishes without the password on the command line.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from sglang_mint.dev.cpu_env import default_cache_dir
from sglang_mint.errors import MintError
from sglang_mint.process import pid_alive

BUCKET = "mint-adapters"
DATABASE = "mint"


def state_file() -> Path:
    return default_cache_dir() / "cluster.json"


def run_dir() -> Path:
    return Path(f"/tmp/mint-cluster-{os.getuid()}")  # SMG refuses middleware files under /root/


def run_cluster(engines: int, port: int, catalog: str | None, catalog_size: int) -> int:
    from sglang_mint.catalog.location import parse_location
    from sglang_mint.dev.demo import demo_assets
    from sglang_mint.dev.server import SGLangServer
    from sglang_mint.gateway.smg import SMGGateway

    if engines < 1:
        raise MintError(f"--engines must be at least 1, got {engines}")
    if state_file().exists() and pid_alive(json.loads(state_file().read_text()).get("pid")):
        raise MintError(f"a cluster is already running ({state_file()}); stop it with `mint cluster down`")
    if catalog is not None:
        parse_location(catalog)  # a bad --catalog fails before anything starts
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    model, adapters = demo_assets()
    rd = run_dir()
    rd.mkdir(exist_ok=True)
    t_up = time.perf_counter()
    with contextlib.ExitStack() as stack:  # everything started is stopped, in reverse order
        stack.callback(print, f"==> stopped; nothing left running (logs in {rd})", flush=True)
        state_file().write_text(json.dumps({"pid": os.getpid()}))
        stack.callback(state_file().unlink, missing_ok=True)
        (rd / "env").unlink(missing_ok=True)  # another run's: its servers are gone
        stack.callback((rd / "env").unlink, missing_ok=True)
        work = Path(tempfile.mkdtemp(prefix="work-", dir=rd))  # engine caches: deleted at the end
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        engine_env: dict[str, str] = {}
        if catalog is None:
            catalog, engine_env = _start_catalog(stack, stop, model, adapters, catalog_size, work)
        if stop.is_set():
            return 0
        shown = parse_location(catalog).display
        catalog, engine_env = _engine_secrets(catalog, engine_env, work)
        gateway = stack.enter_context(SMGGateway(port, log_path=rd / "smg.log"))
        gateway.install_adapter_route("tiny", warm=False)
        warming = gateway.warm_adapter_route_in_background()  # beside the engines' start
        print(f"==> gateway {gateway.url} (smg, consistent_hashing on the adapter id; log {gateway.log_path})")
        print(f"==> starting {engines} engines on {shown} (CPU, about 30 s each)", flush=True)
        servers = []
        for i in range(engines):
            extra = ["--mint-catalog", catalog, "--mint-gateway", gateway.url]
            if not parse_location(catalog).is_folder:
                extra += ["--mint-catalog-cache", str(work / f"engine{i}")]
            servers.append(SGLangServer(model, extra_args=extra, env=engine_env, log_path=rd / f"engine{i}.log"))
        stack.callback(_stop_engines, servers, _start_engines(servers, stop))
        if stop.is_set():
            return 0
        up = {s.url for s in servers if s.proc and s.proc.poll() is None}
        if not up:
            print("==> no engine started; see the logs above", file=sys.stderr)
            return 1
        warming.result()
        gateway.wait_for_workers(up, timeout=60)
        t_ready = time.perf_counter() - t_up
        for s in servers:
            state = f"ready in {s.start_seconds:.1f} s" if s.start_seconds else "FAILED"
            print(f"    engine {s.url}  {state}  /mint/status  (log {s.log_path})")
        _print_contract(gateway, catalog, shown, next(iter(adapters)), servers[0].url, t_ready)
        while not stop.is_set():
            if all(s.proc.poll() is not None for s in servers if s.proc):
                print("==> every engine has exited", file=sys.stderr)
                break
            stop.wait(1.0)
        print("==> stopping engines, gateway, object store and PostgreSQL", flush=True)
    return 0


def _start_catalog(stack: contextlib.ExitStack, stop: threading.Event, model: Path, adapters: dict[str, Path],
                   size: int, work: Path) -> tuple[str, dict[str, str]]:
    """Start PostgreSQL and the object store, fill the demo catalog; returns (its URL, the engines' env)."""
    from sglang_mint.catalog import init_catalog
    from sglang_mint.catalog.location import parse_location
    from sglang_mint.catalog.synth import synth
    from sglang_mint.dev.pg_server import PostgresServer
    from sglang_mint.dev.s3_server import S3Server

    t0 = time.perf_counter()
    pg = stack.enter_context(PostgresServer())
    url = pg.create_database(DATABASE)
    print(f"==> postgresql {parse_location(url).display} (ready in {time.perf_counter() - t0:.1f} s)", flush=True)
    t0 = time.perf_counter()
    s3 = stack.enter_context(S3Server())
    s3.client().create_bucket(Bucket=BUCKET)
    blobs = f"s3://{BUCKET}/catalog"
    print(f"==> object store {s3.endpoint} (moto, S3 API; blobs at {blobs}; ready in "
          f"{time.perf_counter() - t0:.1f} s)", flush=True)
    os.environ.update(s3.env())  # this process writes the catalog's blobs
    if stop.is_set():
        return url, s3.env()
    t0 = time.perf_counter()
    with init_catalog(url, str(model), blobs=blobs, cache_dir=str(work / "init")) as cat:
        for name, folder in adapters.items():
            cat.publish(f"demo/{name}", str(folder))
        if size > 0:
            synth(cat, size, prefix="synth/", rank=1, progress=False)
    print(f"==> catalog: {len(adapters)} demo/ + {size:,} synth/ adapters in "
          f"{time.perf_counter() - t0:.1f} s", flush=True)
    return url, s3.env()


def _engine_secrets(catalog: str, env: dict[str, str], work: Path) -> tuple[str, dict[str, str]]:
    """(the catalog as the engines' command lines show it, their environment).

    A postgresql:// URL's password moves into ``work/pgpass`` (PGPASSFILE), and the URL loses it:
    postgresql://postgres:pw@127.0.0.1:5432/mint -> postgresql://postgres@127.0.0.1:5432/mint. When
    there is a secret (a password, AWS keys), run_dir()/env gives other shells the same variables."""
    from sglang_mint.catalog.location import parse_location, pgpass_entry, without_password

    env = dict(env)
    bare = without_password(catalog)
    if not parse_location(catalog).is_folder and bare != catalog:
        pgpass = work / "pgpass"
        _write_private(pgpass, pgpass_entry(catalog) + "\n")
        env["PGPASSFILE"] = str(pgpass)
    if env:
        lines = [f"export {k}={v}" for k, v in env.items()] + [f"export MINT_CATALOG_CACHE={work / 'cli'}"]
        _write_private(run_dir() / "env", "\n".join(lines) + "\n")
    return bare, env


def _write_private(path: Path, text: str) -> None:
    """Write a new file readable by this user only from its first byte (libpq also ignores a
    password file others can read); an old file of that name, of whatever mode, is replaced."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def _start_engines(servers: list, stop: threading.Event) -> list[threading.Thread]:
    """Start every engine at once; returns the starter threads (joined when stopping)."""
    def start(server):
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001  (one engine failing leaves the others serving)
            print(f"==> engine {server.url} failed to start: {exc}", file=sys.stderr, flush=True)

    starters = [threading.Thread(target=start, args=(s,), daemon=True) for s in servers]
    [t.start() for t in starters]
    while any(t.is_alive() for t in starters) and not stop.is_set():
        stop.wait(0.5)
    return starters


def _stop_engines(servers: list, starters: list[threading.Thread]) -> None:
    # An engine still starting has a process already: stopping it ends its starter's wait,
    # and the second round catches one whose process appeared in between.
    for _ in range(2):
        stoppers = [threading.Thread(target=s.stop) for s in servers]
        [t.start() for t in stoppers]
        [t.join() for t in stoppers]
        [t.join(timeout=30) for t in starters]


def _print_contract(gateway, catalog: str, shown: str, first: str, engine_url: str, seconds: float) -> None:
    """``catalog`` has no password (_engine_secrets): PGPASSFILE in the env file has it."""
    env = f". {run_dir() / 'env'} && " if (run_dir() / "env").exists() else ""
    print(f"\n==> up in {seconds:.1f} s; catalog {shown}\n"
          f"==> client contract: the adapter id in `model`, through the gateway\n"
          f"    openai.OpenAI(base_url=\"{gateway.openai_url}\", api_key=\"none\")"
          f".completions.create(model=\"demo/{first}\", prompt=\"hi\", max_tokens=8)\n"
          f"    curl {gateway.openai_url}/completions -H 'content-type: application/json' "
          f"-d '{{\"model\": \"synth/0000042\", \"prompt\": \"hi\", \"max_tokens\": 8}}'\n"
          f"==> publish (every engine serves it on its next request)\n"
          f"    {env}mint catalog publish {catalog} acme/bot ./my-peft-adapter\n"
          f"    curl -F files=@adapter_config.json -F files=@adapter_model.safetensors "
          f"{engine_url}/mint/adapters/acme/bot/revisions\n"
          f"==> place whole adapters by their traffic (add --dry-run to see the moves first)\n"
          f"    mint gateway rebalance --gateway {gateway.url} --gateway-metrics "
          f"http://{gateway.host}:{gateway.prometheus_port} --base-model tiny\n"
          f"==> running; Ctrl-C or `mint cluster down` stops it", flush=True)


def stop_cluster(timeout: float = 90.0) -> int:
    if not state_file().exists():
        print("no cluster is running")
        return 0
    pid = json.loads(state_file().read_text()).get("pid")
    if not pid_alive(pid):
        state_file().unlink(missing_ok=True)
        print("no cluster is running (removed a stale state file)")
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.25)
    if pid_alive(pid):
        print(f"cluster (pid {pid}) still stopping after {timeout:.0f} s")
        return 1
    print("cluster stopped")
    return 0
