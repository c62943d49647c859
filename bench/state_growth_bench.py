"""Does per-adapter state stay bounded over a sweep of distinct adapters?

One server (--enable-mint, the demo's catalog of synthetic rank-1 adapters, a
64 MiB host budget) serves N distinct adapters once each, 1 token per request.
The host budget fills after about a thousand adapters; from then on every new
adapter evicts an old one, so the resident set is constant and any growth of
the processes is state kept per adapter ever seen. We sample the RSS of the
frontend (launcher + tokenizer manager) and of the scheduler after a warm-up
that fills the budget, then every N/10 adapters, and compare with what
/mint/status counts. Stock SGLang has no catalog to sweep, so there is no
stock figure: the question is about the plugin's own state.

    python bench/state_growth_bench.py [--adapters 100000] [--warmup 3000]

Writes bench/results/state_growth_bench.jsonl. The server runs with
--sleep-on-idle (the harness default): idle sleep does not change memory.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai

from _common import append_result
from _server_memory import mib, processes
from sglang_mint.dev.demo import demo_assets, demo_catalog
from sglang_mint.dev.server import SGLangServer

CATALOG_SIZE = 100_000
HOST_BUDGET = "64MiB"
CONCURRENCY = 32


def status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status") as r:
        body = json.loads(r.read())
    return {"registered_names": body["registered_names"], **body["schedulers"][0]}


def sweep(client, ids):
    def one(adapter_id):
        client.completions.create(model=adapter_id, prompt="the quick brown fox", max_tokens=1, temperature=0)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        list(pool.map(one, ids))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--adapters", type=int, default=CATALOG_SIZE - 3000, help="distinct adapters to serve once each")
    ap.add_argument("--warmup", type=int, default=3000, help="adapters served before the baseline sample")
    args = ap.parse_args()
    if args.adapters + args.warmup > CATALOG_SIZE:
        ap.error(f"--adapters + --warmup must be at most {CATALOG_SIZE:,}")
    model, adapters = demo_assets()
    catalog = demo_catalog(model, adapters, CATALOG_SIZE)
    ids = [f"synth/{i:07d}" for i in range(args.warmup + args.adapters)]
    extra = ["--mint-catalog", str(catalog), "--mint-host-cache-bytes", HOST_BUDGET, "--max-loras-per-batch", "8"]
    with SGLangServer(model, enable_mint=True, extra_args=extra, python=sys.executable) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        procs = processes(server)
        sweep(client, ids[: args.warmup])
        base = {name: p.memory_info().rss for name, p in procs.items()}
        samples = []
        t0 = time.perf_counter()
        step = max(1, args.adapters // 10)
        for start in range(args.warmup, len(ids), step):
            sweep(client, ids[start:start + step])
            rss = {name: p.memory_info().rss for name, p in procs.items()}
            samples.append({"served": start + step - args.warmup, "seconds": round(time.perf_counter() - t0, 1),
                            **{f"{n}_growth_mib": mib(rss[n] - base[n]) for n in rss}})
            print(json.dumps(samples[-1]), flush=True)
        final = status(server)
    growth = {n: samples[-1][f"{n}_growth_mib"] for n in procs}
    record = {
        "setup": {"catalog_adapters": CATALOG_SIZE, "rank": 1, "host_budget": HOST_BUDGET, "warmup": args.warmup,
                  "adapters_swept": args.adapters, "concurrency": CONCURRENCY, "max_tokens": 1},
        "baseline_rss_mib": {n: mib(v) for n, v in base.items()},
        "growth_mib": growth,
        "target_growth_mib": 50,
        "met": all(v < 50 for v in growth.values()),
        "adapters_per_s": round(args.adapters / samples[-1]["seconds"], 1),
        "status_after": {k: final[k] for k in ("registered_names", "resident", "host_bytes", "host_peak_bytes",
                                               "host_budget_bytes", "evictions", "cold_loads")},
        "samples": samples,
    }
    append_result("state_growth_bench", record)
    print(json.dumps({k: record[k] for k in ("growth_mib", "met", "adapters_per_s", "status_after")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
