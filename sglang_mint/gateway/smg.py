"""Start and stop SGLang's gateway, SMG (``smg launch``, pinned smg==1.13.0), and ask it about workers.

    with SMGGateway(port=30080, policy=AFFINITY) as gw:
        gw.install_adapter_route("tiny")       # clients keep model=<adapter-id>
        ...                                    # engines register themselves (--mint-gateway)
        gw.workers()   # [{"url": "http://127.0.0.1:30001", "is_healthy": True, ...}, ...]

Health checks are tight by default (every second, unhealthy after two misses):
an engine that dies without deregistering (``kill -9``) leaves the hash ring's
live set within about two seconds, and meanwhile SMG retries a refused
connection on the next engine of the ring. SMG runs as a
``sglang_mint.process.ManagedProcess``: its own process group, its output in
``log_path``, stopped with SIGTERM (SIGKILL after 10 s).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from sglang_mint.client import MintAPIError, MintClient
from sglang_mint.errors import MintError
from sglang_mint.gateway.middleware import (GatewayError, adapter_route_modules, build_adapter_route,
                                            install_adapter_route, remove_adapter_route, warm_adapter_route)
from sglang_mint.gateway.placement import DEFAULT_LOAD_FACTOR, Placement, place_adapters
from sglang_mint.ports import free_port
from sglang_mint.process import ManagedProcess
from sglang_mint.usage.engines import merge_ledgers

# An engine lost to kill -9 refuses the next probe: dropped after two, about 2 s. A busy one is not:
# SGLang's /health sends a one-token request and looks for any output once a second, so a probe
# takes at least 1 s and, while a forward runs longer than that (a CPU prefill under load), 2 s or
# more; SMG's 2 s timeout then dropped a serving engine and moved its adapters. 5 s allows four looks.
HEALTH_FLAGS = ["--health-check-interval-secs", "1", "--health-failure-threshold", "2",
                "--health-success-threshold", "1", "--health-check-timeout-secs", "5"]


@dataclass(frozen=True)
class RoutingPolicy:
    """An SMG ``--policy`` and the flags that tune it, e.g.
    ``RoutingPolicy("manual", ("--assignment-mode", "min_load"))``."""

    name: str
    flags: tuple[str, ...] = ()

    def args(self) -> list[str]:
        return ["--policy", self.name, *self.flags]


# Every request for one adapter on one engine (the routing key is the adapter id): an engine's
# share is the luck of where the popular adapters hash, and the ring hangs on the engines' URLs
# (max/mean 1.01 to 1.59 on 2 engines, 1.14 to 1.81 on 3, over gateway_bench runs;
# placement.py bounds it).
AFFINITY = RoutingPolicy("consistent_hashing")


def bounded_affinity(load_factor: float = 1.1, abs_threshold: int = 0) -> RoutingPolicy:
    """SMG's prefix_hash on the adapter id with a load bound: the ring's engine while its requests
    in flight (SMG's own count) are at most max(mean * load_factor, mean + abs_threshold), the mean
    counting this request; else the least loaded engine under that bound.

    With 8 clients and 2 engines the mean is 4, so the ring's engine takes a request while it has
    at most 4 in flight; with 3 engines, at most 2. Measured (gateway_bench at a9f1d4a): even
    shares (max/mean 1.11 / 1.12 on 2 / 3 engines), but 32% / 44% of requests walked off the ring
    and cold loads were round robin's (553 / 539 per 1,000 against 384 / 281 for AFFINITY): at
    this concurrency an engine's in-flight count swings past the mean whatever its share, and each
    walk takes an adapter to an engine that does not hold it. SMG's defaults (1.25, 10) move
    nothing until an engine has 10 more requests in flight than the mean."""
    return RoutingPolicy("prefix_hash", ("--prefix-hash-load-factor", str(load_factor),
                                         "--prefix-hash-balance-abs-threshold", str(abs_threshold)))


BOUNDED_AFFINITY = bounded_affinity()


def gateway_workers(gateway_url: str) -> list[dict]:
    """SMG's registered workers: ``[{"url": ..., "is_healthy": ...}, ...]``."""
    with urllib.request.urlopen(gateway_url.rstrip("/") + "/workers", timeout=10) as r:
        return json.loads(r.read())["workers"]


def served_model_names(worker: dict, timeout: float = 10.0) -> set[str]:
    """The model names an engine serves: as SMG's ``/workers`` names them (``model_id``,
    ``models[].id``), else as the engine's own ``GET /v1/models`` does, without the adapters it
    lists (SGLang gives each a ``parent``): ``{"tiny"}``."""
    names = {worker.get("model_id")} | {m.get("id") for m in worker.get("models") or [] if isinstance(m, dict)}
    names -= {None, "", "unknown"}  # SMG's model_id for a worker whose model it never learnt
    if names:
        return names
    try:
        with urllib.request.urlopen(worker["url"].rstrip("/") + "/v1/models", timeout=timeout) as r:
            listed = json.loads(r.read()).get("data") or []
    except (OSError, ValueError) as exc:
        raise GatewayError(f"cannot ask the engine {worker['url']} what it serves (GET /v1/models): {exc}") from None
    return {m["id"] for m in listed if isinstance(m, dict) and m.get("id") and not m.get("parent")}


def check_base_model(base_model: str, workers: list[dict]) -> None:
    """GatewayError unless every healthy engine serves ``base_model``: the middleware sends every
    request on as ``model=<base_model>``, so with a name no engine serves each one would fail."""
    serving = {w["url"]: served_model_names(w) for w in workers if w.get("is_healthy")}
    others = {url: names for url, names in serving.items() if base_model not in names}
    if not others:
        return
    engines_of: dict[str, list[str]] = {}  # "'tiny'": the engines serving just that
    for url, names in sorted(serving.items()):
        engines_of.setdefault(", ".join(repr(n) for n in sorted(names)) or "no model they name", []).append(url)
    said = "; ".join(f"{names} ({', '.join(urls)})" for names, urls in engines_of.items())
    named = {n for names in serving.values() for n in names}
    hint = f"; pass --base-model {next(iter(named))!r}" if len(named) == 1 else ""
    raise GatewayError(f"base model {base_model!r} is not what the engines behind the gateway serve: {said}; the "
                       f"middleware would send {'their' if len(others) < len(serving) else 'every'} request on as "
                       f"model={base_model!r}{hint}")


def require_affinity(policy: str, whose: str = "this gateway's", seen: str = "") -> None:
    """GatewayError unless ``policy`` is AFFINITY's: placement routes by SMG's consistent-hashing ring."""
    if policy != AFFINITY.name:
        raise GatewayError(f"rebalance places adapters on SMG's consistent-hashing ring; {whose} policy is {policy}"
                           f"{seen} (start SMG with --policy {AFFINITY.name})")


SELECTION_METRIC = "smg_worker_selection_total"


def routed_by_policy(metrics_text: str) -> dict[str, float]:
    """Requests SMG routed per policy, from its Prometheus text: the line
    ``smg_worker_selection_total{connection_mode="http",model="tiny",policy="consistent_hashing",
    worker_type="regular"} 812`` counts 812 for consistent_hashing."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith(SELECTION_METRIC + "{") and 'policy="' in line:
            policy = line.split('policy="', 1)[1].split('"', 1)[0]
            counts[policy] = counts.get(policy, 0.0) + float(line.rsplit("}", 1)[1].split()[0])
    return {policy: n for policy, n in counts.items() if n > 0}


def check_gateway_policy(metrics_url: str, timeout: float = 10.0) -> None:
    """GatewayError unless SMG routes by consistent hashing. SMG 1.13.0 names its policy nowhere in
    its HTTP API, only in its Prometheus metrics (``metrics_url``: its --prometheus-host and
    --prometheus-port), and there only once it has routed a request."""
    url = metrics_url.rstrip("/") + "/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            routed = routed_by_policy(r.read().decode())
    except (OSError, ValueError) as exc:
        raise GatewayError(f"cannot read SMG's routing policy from {url} ({exc}): pass --gateway-metrics "
                           "http://HOST:PORT, SMG's --prometheus-host and --prometheus-port") from None
    if not routed:
        raise GatewayError(f"SMG has routed no request since it started ({url} counts none), so it does not name "
                           f"its policy yet; rebalance needs --policy {AFFINITY.name}: run again once it has")
    for policy in sorted(routed):
        require_affinity(policy, "the gateway's", f" ({routed[policy]:.0f} requests routed by it, {url})")


USAGE_REFUSAL_HINTS = {401: "pass the engines' --admin-api-key", 403: "pass the engines' --admin-api-key",
                       404: "start the engine with --mint-usage-dir"}


def requests_from_engines(urls: list[str], since: float, until: float | None = None,
                          admin_api_key: str | None = None, timeout: float = 60.0) -> tuple[dict[str, int], list[str]]:
    """Requests per adapter over ``[since, until)`` from each engine's usage ledger (``GET /mint/usage``),
    every ledger counted once (usage/engines.py), and the engines that could not be reached. A refusal
    (no key, no ledger) is an error naming the engine: rates missing one ledger would place by a part."""
    answers, unread = {}, []
    for url in urls:
        try:
            answers[url] = MintClient(url, admin_api_key=admin_api_key, timeout=timeout).usage(
                since=since, until=until, by="adapter")
        except MintAPIError as exc:
            hint = USAGE_REFUSAL_HINTS.get(exc.status)
            raise MintError(f"{url}/mint/usage answered {exc.status}: {exc.message}"
                            + (f" ({hint})" if hint else "")) from None
        except OSError:
            unread.append(url)
    return merge_ledgers(answers), unread


def plan_placement(gateway_url: str, rates: dict[str, float], load_factor: float = DEFAULT_LOAD_FACTOR,
                   workers: list[dict] | None = None) -> Placement:
    """Where :func:`rebalance` would put each adapter on the gateway's engines now; changes nothing.
    SMG's ring holds every registered worker; adapters go to the healthy ones. ``workers`` is SMG's
    list when the caller has read it already (the one its rates came from), else it is read here."""
    if workers is None:
        workers = gateway_workers(gateway_url)
    return place_adapters(rates, [w["url"] for w in workers], [w["url"] for w in workers if w.get("is_healthy")],
                          load_factor)


def rebalance(gateway_url: str, base_model: str, rates: dict[str, float],
              load_factor: float = DEFAULT_LOAD_FACTOR, workers: list[dict] | None = None) -> tuple[Placement, str]:
    """Place adapters on the gateway's engines by request rate (placement.py) and route them there;
    returns the placement and SMG's id of the new middleware.

    The gateway must run ``--policy consistent_hashing`` (AFFINITY). The new adapter-route
    middleware, carrying the moved adapters' routing keys, is built, attached and warmed before
    the old ones are removed: meanwhile a request takes the old route or the new one, never
    none. About 10 s to build and 20 s for SMG to compile, on 2 cores."""
    placement = plan_placement(gateway_url, rates, load_factor, workers)
    old = adapter_route_modules(gateway_url)
    new_id = install_adapter_route(gateway_url, build_adapter_route(base_model, routing_keys=placement.routing_keys))
    for module_id in old:
        remove_adapter_route(gateway_url, module_id)
    return placement, new_id


def smg_executable() -> str:
    here = Path(sys.executable).parent / "smg"
    found = str(here) if here.exists() else shutil.which("smg")
    if found is None:
        raise GatewayError("the smg gateway is not installed (pip install smg==1.13.0, as pinned in requirements.lock)")
    return found


class SMGGateway:
    def __init__(self, port: int, *, host: str = "127.0.0.1", policy: RoutingPolicy | str = AFFINITY,
                 worker_urls: list[str] | None = None, log_path: str | os.PathLike | None = None,
                 extra_args: list[str] | None = None, start_timeout: float = 30.0,
                 prometheus_port: int | None = None):
        self.host, self.port = host, port
        self.policy = RoutingPolicy(policy) if isinstance(policy, str) else policy
        # SMG's metrics listener defaults to 0.0.0.0:29000, one per machine: each gateway gets its own
        # port, on the gateway's own host (loopback unless told otherwise).
        self.prometheus_port = prometheus_port or free_port()
        self.args = [smg_executable(), "launch", "--host", host, "--port", str(port), *self.policy.args(),
                     "--enable-wasm", *HEALTH_FLAGS, "--log-level", "warn",
                     "--prometheus-host", host, "--prometheus-port", str(self.prometheus_port),
                     *(extra_args or [])]
        if worker_urls:
            self.args += ["--worker-urls", *worker_urls]
        self.log_path = Path(log_path or Path(tempfile.mkdtemp(prefix="mint-smg-")) / "smg.log")
        self.start_timeout = start_timeout
        self.process = ManagedProcess(self.args, name="smg", log_path=self.log_path, error=GatewayError)
        self.base_model: str | None = None
        self.route_module_id: str | None = None  # SMG's id of the adapter-route middleware attached now

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process.proc

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> "SMGGateway":
        self.process.start(ready=self._answers, timeout=self.start_timeout, poll=0.2)
        return self

    def _answers(self) -> bool:
        try:
            self._get("/workers", timeout=1)
            return True
        except OSError:
            return False

    def install_adapter_route(self, base_model: str, warm: bool = True) -> str:
        """Build (cached) and attach the middleware that keeps ``model=<adapter-id>`` working;
        ``warm=False`` leaves its warm-up to :meth:`warm_adapter_route_in_background`."""
        self.route_module_id = install_adapter_route(self.url, build_adapter_route(base_model), warm=warm)
        self.base_model = base_model
        return self.route_module_id

    def rebalance(self, rates: dict[str, float], load_factor: float = DEFAULT_LOAD_FACTOR) -> Placement:
        """:func:`rebalance`, on this gateway (its policy must be AFFINITY)."""
        if self.base_model is None:
            raise GatewayError("rebalance needs the adapter-route middleware: call install_adapter_route first")
        require_affinity(self.policy.name)
        placement, self.route_module_id = rebalance(self.url, self.base_model, rates, load_factor)
        return placement

    def warm_adapter_route_in_background(self) -> Future:
        """Warm the installed middleware on a thread (SMG compiles it on its first requests, about
        20 s of one core), e.g. while engines start; ``.result()`` waits and raises its error."""
        pool = ThreadPoolExecutor(1, thread_name_prefix="smg-warm-up")
        try:
            return pool.submit(warm_adapter_route, self.url)
        finally:
            pool.shutdown(wait=False)

    def workers(self) -> list[dict]:
        return self._get("/workers")["workers"]

    def healthy_urls(self) -> set[str]:
        return {w["url"] for w in self.workers() if w.get("is_healthy")}

    def wait_for_workers(self, urls: set[str], timeout: float = 60.0, healthy: bool = True) -> None:
        """Wait until exactly ``urls`` are the healthy workers (or the registered ones if not ``healthy``)."""
        deadline = time.monotonic() + timeout
        while True:
            now = self.healthy_urls() if healthy else {w["url"] for w in self.workers()}
            if now == set(urls):
                return
            if time.monotonic() > deadline:
                raise GatewayError(f"SMG's workers are {sorted(now)}, expected {sorted(urls)} after {timeout:.0f}s")
            time.sleep(0.2)

    def metrics(self) -> str:
        """SMG's Prometheus text, e.g. ``smg_prefix_hash_policy_branch_total{branch="ring_hit"} 812``."""
        with urllib.request.urlopen(f"http://{self.host}:{self.prometheus_port}/metrics", timeout=10) as r:
            return r.read().decode()

    def _get(self, path: str, timeout: float = 10.0) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def log_tail(self, lines: int = 30) -> str:
        return self.process.log_tail(lines)

    def stop(self, timeout: float = 10.0) -> None:
        self.process.stop(timeout)

    def __enter__(self) -> "SMGGateway":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
