"""Catalog serving under tensor and data parallelism, against one rank, in one run.

The tiny Llama on CPU, a synthetic catalog of rank-4 adapters:

  host      the same resident set (every adapter of the catalog, read once) on
            TP=1 and TP=2: how much the node's memory grew, the ranks' Pss summed
            (shared pages split among their sharers), from /mint/status (target:
            TP=2 at most 1.1 x TP=1), from after the first 8 adapters (which warm
            the pool and each rank's working memory) to after the last; the LRU's
            own count is reported beside it
  cold      time to the first token of a request for a cold adapter, one at a
            time, p50 and p99, TP=1 and TP=2
  affinity  1,000 zipf(1.1) requests over the catalog, 16 in flight, on DP=2 with a
            host budget of ~8 adapters per rank: cold loads with
            --mint-dp-dispatch affinity against SGLang's own round robin

Results go to bench/results/parallel_bench.jsonl.

    python bench/parallel_bench.py [--adapters 64] [--requests 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from _common import append_result
from sglang_mint.catalog import init_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.dev.cpu_env import default_cache_dir
from sglang_mint.dev.server import SGLangServer
from sglang_mint.dev.tiny import write_tiny_llama

PROMPT = "the quick brown fox"
WARMUP = 8  # adapters served before the memory baseline
DP_BUDGET = "600KB"  # about eight rank-4 tiny adapters per rank (rank 64: --dp-budget 8MB)


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status") as r:
        return json.loads(r.read())


def one(client, adapter_id) -> float:
    t0 = time.perf_counter()
    client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=1, temperature=0)
    return time.perf_counter() - t0


def tp_run(model, catalog, ids, tp, log_dir, rank) -> dict:
    extra = ["--mint-catalog", str(catalog), "--tp-size", str(tp), "--max-lora-rank", str(max(8, rank))]
    with SGLangServer(model, enable_mint=True, extra_args=extra, log_path=log_dir / f"tp{tp}.log",
                      start_timeout=600) as srv:
        client = openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0, timeout=600)
        one(client, "tiny")  # the base model once: first-request costs are not cold-load costs
        # The first WARMUP adapters fill the LoRA pool's slots and each rank's working memory for
        # adapter requests; growth is measured over the rest, so it counts what each further
        # resident adapter costs the node and not what a rank costs once (a second rank's own
        # activations and pool would otherwise read as adapter memory).
        warmup = [one(client, a) for a in ids[:WARMUP]]
        before = status(srv)["schedulers"][0]
        cold = warmup + [one(client, a) for a in ids[WARMUP:]]  # every adapter cold, one at a time
        warm = [one(client, a) for a in ids[:16]]
        sched = status(srv)["schedulers"][0]
    # measured: how much the ranks' memory grew (Pss splits shared pages among the ranks mapping them)
    pss_growth = sum(r["pss_bytes"] for r in sched["ranks"]) - sum(r["pss_bytes"] for r in before["ranks"])
    return {"tp": tp, "node_pss_growth_bytes": pss_growth, "growth_over_adapters": len(ids) - WARMUP,
            "node_host_bytes": sum(sched["node_host_bytes"].values()),
            "host_bytes_growth": sched["host_bytes"] - before["host_bytes"],
            "rank_host_bytes": [r["host_bytes"] for r in sched["ranks"]], "resident": sched["resident"],
            "cold_ttft_p50_ms": round(pct(cold, 0.5) * 1e3, 1), "cold_ttft_p99_ms": round(pct(cold, 0.99) * 1e3, 1),
            "warm_ttft_p50_ms": round(statistics.median(warm) * 1e3, 1),
            "read_p50_s": sched["cold_load_p50_s"], "read_p99_s": sched["cold_load_p99_s"]}


def dp_run(model, catalog, requests, dispatch, log_dir, budget, rank) -> dict:
    extra = ["--mint-catalog", str(catalog), "--dp-size", "2", "--mint-host-cache-bytes", budget,
             "--max-lora-rank", str(max(8, rank)),
             "--mint-dp-dispatch", dispatch]
    with SGLangServer(model, enable_mint=True, extra_args=extra, log_path=log_dir / f"dp-{dispatch}.log",
                      start_timeout=600) as srv:
        client = openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0, timeout=600)
        t0 = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda a: one(client, a), requests))
        seconds = time.perf_counter() - t0
        scheds = status(srv)["schedulers"]
    loads = sum(s["cold_loads"] for s in scheds)
    return {"dispatch": dispatch, "requests": len(requests), "cold_loads": loads,
            "cold_loads_per_1000": round(loads * 1000 / len(requests), 1),
            "per_rank_requests": [s["requests"] for s in scheds], "seconds": round(seconds, 1)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adapters", type=int, default=64, help="catalog size (default 64)")
    ap.add_argument("--requests", type=int, default=1000, help="zipf requests for the DP comparison")
    ap.add_argument("--rank", type=int, default=4, help="adapter rank (default 4; 64 makes tensor data dominate "
                    "the per-adapter Python objects)")
    ap.add_argument("--dp-budget", default=DP_BUDGET, help=f"host budget per DP rank (default {DP_BUDGET})")
    ap.add_argument("--out", default=None, help="working folder (default: under the cache dir)")
    args = ap.parse_args(argv)

    work = Path(args.out or default_cache_dir() / "parallel-bench")
    work.mkdir(parents=True, exist_ok=True)
    model = work / "model"
    if not (model / "config.json").exists():
        write_tiny_llama(model)
    catalog = work / f"catalog-{args.adapters}-r{args.rank}"
    if not (catalog / "catalog.db").exists():
        with init_catalog(str(catalog), str(model)) as cat:
            synth(cat, args.adapters, prefix="s/", rank=args.rank, progress=False)
    ids = [f"s/{k:07d}" for k in range(args.adapters)]

    host = [tp_run(model, catalog, ids, tp, work, args.rank) for tp in (1, 2)]
    ratio = host[1]["node_pss_growth_bytes"] / host[0]["node_pss_growth_bytes"]
    rng = random.Random(0)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(args.adapters)]
    requests = [ids[k] for k in rng.choices(range(args.adapters), weights=weights, k=args.requests)]
    dp = {d: dp_run(model, catalog, requests, d, work, args.dp_budget, args.rank) for d in ("affinity", "sglang")}
    record = {
        "setup": {"model": "tiny llama, fp32", "adapters": args.adapters, "rank": args.rank, "dp_budget": args.dp_budget},
        "tp": host,
        "node_pss_growth_tp2_over_tp1": round(ratio, 3), "host_target": "<= 1.1", "host_met": ratio <= 1.1,
        "cold_ttft_p50_tp2_over_tp1": round(host[1]["cold_ttft_p50_ms"] / host[0]["cold_ttft_p50_ms"], 2),
        "cold_ttft_p99_tp2_over_tp1": round(host[1]["cold_ttft_p99_ms"] / host[0]["cold_ttft_p99_ms"], 2),
        "dp": dp,
        "dp_cold_loads_affinity_over_sglang": round(dp["affinity"]["cold_loads"] / dp["sglang"]["cold_loads"], 3),
    }
    append_result("parallel_bench", record)
    print(json.dumps(record, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
