"""Adapter affinity through SGLang's gateway (SMG): cold loads and TTFT, consistent_hashing against round_robin.

For 2 and 3 engines, each policy gets a fresh cluster: SMG (``smg launch --policy
<policy>``) with the adapter-route middleware, then the engines (tiny Llama on CPU,
``--mint-gateway``: they register themselves), all reading one catalog folder of
64 synthetic rank-4 adapters. Each engine's host budget (600KB) holds about 8 of
them, so an engine that sees every adapter keeps evicting and re-reading.

Both policies get the same middleware, so the body is rewritten identically:

    {"model": "s/0000003"}  ->  {"model": "tiny", "lora_path": "s/0000003"}  + X-SMG-Routing-Key: s/0000003

consistent_hashing puts each key on one engine of its ring; round_robin ignores the
key and deals requests out in turn. Only SMG's ``--policy`` differs between the two.

Workload (as in parallel_bench's DP=2 section): the same seeded sequence of N
zipf(1.1) requests over the catalog (adapter k has weight 1/(k+1)^1.1, so s/0000000
takes about 1 request in 5), sent through the gateway with the openai client,
streaming, C in flight. Before it, each engine serves the base model and one
warm-up adapter directly, and the gateway serves the base model until its
middleware answers fast (first-request costs are not cold-load costs).

Measured per (engines, policy): cold loads per 1,000 requests (the engines'
``cold_loads`` from /mint/status, after minus before), TTFT p50/p99 (time to the
first streamed chunk), failures, wall time, requests per engine. After the timed
part a routing probe sends 2 x engines requests for one more adapter: under
consistent_hashing they all land on one engine, under round_robin on every engine
(this checks that round_robin ignores the routing key).

    flock /tmp/mint-cpu.lock python bench/gateway_bench.py            # about 14 minutes
    flock /tmp/mint-cpu.lock python bench/gateway_bench.py --quick    # 2 engines, 200 requests

Results: one JSON line per run in bench/results/gateway_bench.jsonl, with the
ratios consistent_hashing / round_robin per engine count.
"""

from __future__ import annotations

import argparse
import json
import random
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from _common import append_result
from sglang_mint.catalog import init_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.dev.cpu_env import default_cache_dir
from sglang_mint.dev.server import SGLangServer, free_port
from sglang_mint.gateway.smg import SMGGateway

PROMPT = "the quick brown fox"
BASE = "tiny"
ZIPF_S = 1.1
AFFINITY, ROUND_ROBIN = "consistent_hashing", "round_robin"
WARMUP_ID, PROBE_ID = "probe/0000000", "probe/0000001"  # outside the zipf set


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def scheduler(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status", timeout=60) as r:
        return json.loads(r.read())["schedulers"][0]


def zipf_requests(n_adapters: int, n: int, seed: int) -> list[str]:
    weights = [1.0 / (k + 1) ** ZIPF_S for k in range(n_adapters)]
    return [f"s/{k:07d}" for k in random.Random(seed).choices(range(n_adapters), weights=weights, k=n)]


def one(client, adapter_id: str, max_tokens: int) -> tuple[float | None, str | None]:
    """(TTFT in seconds, None) or (None, the error): time to the first streamed chunk."""
    t0 = time.perf_counter()
    ttft = None
    try:
        stream = client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=max_tokens,
                                           temperature=0, stream=True)
        for chunk in stream:
            if ttft is None and chunk.choices:
                ttft = time.perf_counter() - t0
        if ttft is None:
            return None, "no chunk streamed"
        return ttft, None
    except openai.APIError as exc:
        return None, f"{type(exc).__name__}: {exc}"[:300]


def start_all(servers: list[SGLangServer]) -> None:
    errors = []

    def start(server):
        try:
            server.start()
        except Exception as exc:  # raised below, once every start has finished
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    if errors:
        raise errors[0]


def run_config(model, catalog, requests, engines: int, policy: str, args, log_dir: Path) -> dict:
    t_setup = time.perf_counter()
    tag = f"e{engines}-{policy}"
    with SMGGateway(free_port(), policy=policy, log_path=log_dir / f"smg-{tag}.log") as gw:
        gw.install_adapter_route(BASE)  # the same middleware for both policies
        extra = ["--mint-catalog", str(catalog), "--mint-gateway", gw.url, "--mint-host-cache-bytes", args.budget,
                 "--max-loras-per-batch", "8"]
        servers = [SGLangServer(model, served_name=BASE, extra_args=extra, log_path=log_dir / f"{tag}-{i}.log")
                   for i in range(engines)]
        try:
            start_all(servers)
            gw.wait_for_workers({s.url for s in servers}, timeout=60)
            for s in servers:  # directly, not through the gateway: every engine warmed the same way
                direct = openai.OpenAI(base_url=s.openai_url, api_key="none", max_retries=0, timeout=120)
                for name in (BASE, WARMUP_ID):
                    direct.completions.create(model=name, prompt=PROMPT, max_tokens=args.max_tokens, temperature=0)
            client = openai.OpenAI(base_url=gw.openai_url, api_key="none", max_retries=0, timeout=300)
            gateway_warmup = warm_gateway(client, args.concurrency)
            setup_s = time.perf_counter() - t_setup
            before = [scheduler(s) for s in servers]
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.concurrency) as pool:
                outcomes = list(pool.map(lambda a: one(client, a, args.max_tokens), requests))
            seconds = time.perf_counter() - t0
            after = [scheduler(s) for s in servers]
            probe = probe_routing(client, servers, args.max_tokens, 2 * engines)
        finally:
            stoppers = [threading.Thread(target=s.stop) for s in servers]
            [t.start() for t in stoppers]
            [t.join() for t in stoppers]
    ttfts = [t for t, _ in outcomes if t is not None]
    errors = [e for _, e in outcomes if e is not None]
    loads = sum(a["cold_loads"] - b["cold_loads"] for a, b in zip(after, before))
    result = {
        "engines": engines, "policy": policy, "requests": len(requests),
        "cold_loads": loads, "cold_loads_per_1000": round(loads * 1000 / len(requests), 1),
        "evictions": sum(a["evictions"] - b["evictions"] for a, b in zip(after, before)),
        "ttft_p50_ms": round(pct(ttfts, 0.50) * 1e3, 1) if ttfts else None,
        "ttft_p99_ms": round(pct(ttfts, 0.99) * 1e3, 1) if ttfts else None,
        "failures": len(errors), "first_errors": errors[:3],
        "requests_per_engine": [a["requests"] - b["requests"] for a, b in zip(after, before)],
        "cold_loads_per_engine": [a["cold_loads"] - b["cold_loads"] for a, b in zip(after, before)],
        "probe_requests_per_engine": probe, "gateway_warmup_s": gateway_warmup,
        "seconds": round(seconds, 1), "setup_seconds": round(setup_s, 1),
        "total_seconds": round(time.perf_counter() - t_setup, 1),
    }
    print(json.dumps(result), flush=True)
    return result


def warm_gateway(client, concurrency: int) -> list[float]:
    """Base-model requests through the gateway until they are fast; returns the first ones' seconds.

    SMG instantiates the WebAssembly middleware lazily: on this 2-core machine the first
    two requests after a start took about 12 s each (then 0.04 s), and 8 requests sent at
    once into a fresh gateway all waited about 21 s. Not a cold-load cost, so it is paid here."""
    def timed(_=None) -> float:
        t0 = time.perf_counter()
        client.completions.create(model=BASE, prompt=PROMPT, max_tokens=1, temperature=0)
        return round(time.perf_counter() - t0, 2)

    first = []
    while len(first) < 10 and (len(first) < 2 or max(first[-2:]) > 1.0):
        first.append(timed())
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(timed, range(2 * concurrency)))
    return first


def probe_routing(client, servers, max_tokens: int, n: int) -> list[int]:
    """Requests per engine for ``n`` sequential requests for one adapter: [n, 0, 0] under affinity."""
    before = [scheduler(s)["requests"] for s in servers]
    for _ in range(n):
        client.completions.create(model=PROBE_ID, prompt=PROMPT, max_tokens=max_tokens, temperature=0)
    return [scheduler(s)["requests"] - b for s, b in zip(servers, before)]


def ratio(a, b):
    return None if a is None or not b else round(a / b, 3)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--engines", type=int, nargs="+", default=[2, 3], help="engine counts (default 2 3)")
    ap.add_argument("--adapters", type=int, default=64, help="zipf catalog size (default 64)")
    ap.add_argument("--rank", type=int, default=4, help="adapter rank (default 4)")
    ap.add_argument("--budget", default="600KB",
                    help="--mint-host-cache-bytes per engine (default 600KB: about 8 rank-4 tiny adapters)")
    ap.add_argument("--requests", type=int, default=1000, help="zipf requests per configuration (default 1000)")
    ap.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8)")
    ap.add_argument("--max-tokens", type=int, default=4, help="tokens per completion (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the request sequence (default 0)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="repetitions; the policy order alternates (odd repetitions run round_robin first)")
    ap.add_argument("--round-robin-first", action="store_true",
                    help="run round_robin before consistent_hashing in the first repetition (order effects)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 engines, 200 requests")
    ap.add_argument("--out", default=None, help="working folder (default: under the cache dir)")
    args = ap.parse_args(argv)
    if args.quick:
        args.engines, args.requests = [2], 200

    work = Path(args.out or default_cache_dir() / "gateway-bench")
    work.mkdir(parents=True, exist_ok=True)
    model = default_cache_dir() / "parallel-bench" / "model"  # the same tiny Llama as parallel_bench
    if not (model / "config.json").exists():
        from sglang_mint.dev.tiny import write_tiny_llama

        write_tiny_llama(model)
    catalog = work / f"catalog-{args.adapters}-r{args.rank}"
    if not (catalog / "catalog.db").exists():
        with init_catalog(str(catalog), str(model)) as cat:
            synth(cat, args.adapters, prefix="s/", rank=args.rank, progress=False)
            synth(cat, 2, prefix="probe/", rank=args.rank, progress=False)
    requests = zipf_requests(args.adapters, args.requests, args.seed)

    t0 = time.perf_counter()
    runs = []
    for rep in range(args.repeats):
        for engines in args.engines:
            order = (AFFINITY, ROUND_ROBIN) if (rep + args.round_robin_first) % 2 == 0 else (ROUND_ROBIN, AFFINITY)
            for policy in order:
                runs.append({"repeat": rep, **run_config(model, catalog, requests, engines, policy, args, work)})
    ratios = {}
    for engines in args.engines:
        by = {p: [r for r in runs if r["engines"] == engines and r["policy"] == p] for p in (AFFINITY, ROUND_ROBIN)}
        mean = {p: {k: sum(r[k] for r in rs) / len(rs) for k in ("cold_loads_per_1000", "ttft_p50_ms", "ttft_p99_ms")}
                for p, rs in by.items()}
        ratios[str(engines)] = {f"{k}_affinity_over_round_robin": ratio(mean[AFFINITY][k], mean[ROUND_ROBIN][k])
                                for k in mean[AFFINITY]}
    record = {
        "setup": {"model": "tiny llama, fp32, CPU", "gateway": "smg 1.13.0 + mint adapter-route middleware",
                  "engines": args.engines, "policies": [AFFINITY, ROUND_ROBIN], "adapters": args.adapters,
                  "rank": args.rank, "host_budget_per_engine": args.budget, "requests": args.requests,
                  "zipf_s": ZIPF_S, "concurrency": args.concurrency, "max_tokens": args.max_tokens,
                  "seed": args.seed, "repeats": args.repeats, "fresh_engines_per_configuration": True,
                  "round_robin_first": args.round_robin_first, "quick": args.quick},
        "runs": runs, "ratios": ratios,
        "failures": sum(r["failures"] for r in runs), "seconds": round(time.perf_counter() - t0, 1),
    }
    append_result("gateway_bench", record)
    print(json.dumps({"ratios": ratios, "failures": record["failures"], "seconds": record["seconds"]}, indent=2))
    return 0 if record["failures"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
