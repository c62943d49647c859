"""How fast is the catalog at 10^3, 10^5 and 10^6 adapters?

Measures, against the targets of issue 3:
- resolve p50/p99 (target p99 < 50 us at 10^6), uniform and zipf(1.1) ids, one
  thread, after open; each call timed alone with perf_counter_ns;
- metadata import rate (synth --shared-payload: target >= 20,000 entries/s);
- real-mode synth rate (distinct 12 KB adapters, blobs fsynced per batch) at a smaller N;
- PEFT folder import rate (read, check, publish one by one);
- open time in a fresh process (target < 100 ms);
- resident memory of a fresh process holding the catalog open after 10^5
  resolves, minus the same process before opening (target < 100 MB).

Writes one JSON line per figure to bench/results/catalog_bench.jsonl with the
setup, the machine and the git commit. Big catalogs go under /tmp and are deleted.

    python bench/catalog_bench.py [--sizes 1000,100000,1000000] [--real 10000] [--keep]

With ``--catalog postgresql://USER@HOST:PORT/DB`` (an empty database) or
``--backend postgres`` (a throwaway PostgreSQL server on loopback, started the
way the tests start theirs), it measures the shared backend instead: fill
rate (bulk COPY, shared payload), resolve p50/p99 at each size (target p99
< 1 ms on loopback at 10^6), one thread and four, and open time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from _common import git_commit, machine  # noqa: E402
from sglang_mint.catalog import init_catalog, open_catalog  # noqa: E402
from sglang_mint.catalog.synth import synth  # noqa: E402

TINY = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
        "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000}

PROBE = r"""
import json, os, random, sys, time
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
from sglang_mint.catalog import open_catalog
before = rss()
t0 = time.perf_counter()
cat = open_catalog(sys.argv[1])
cat.resolve(sys.argv[2])
open_s = time.perf_counter() - t0
n = int(sys.argv[3]); rng = random.Random(7)
for _ in range(100000):
    cat.resolve("synth/%07d" % rng.randrange(n))
after = rss()
print(json.dumps({"open_s": open_s, "rss_before": before, "rss_after": after}))
"""


def resolve_latency(cat, n: int, popularity: str, calls: int = 20000) -> dict:
    rng = np.random.default_rng(0)
    if popularity == "zipf":
        idx = (rng.zipf(1.1, calls) - 1) % n
    else:
        idx = rng.integers(0, n, calls)
    ids = ["synth/%07d" % i for i in idx]
    for aid in ids[:1000]:  # warm the statement cache
        cat.resolve(aid)
    times = np.empty(calls, np.int64)
    clock = time.perf_counter_ns
    for k, aid in enumerate(ids):
        t0 = clock()
        cat.resolve(aid)
        times[k] = clock() - t0
    return {"p50_us": float(np.percentile(times, 50)) / 1e3, "p99_us": float(np.percentile(times, 99)) / 1e3,
            "mean_us": float(times.mean()) / 1e3, "calls": calls}


def resolve_threads(cat, n: int, threads: int, calls: int = 5000) -> dict:
    """resolve latency with ``threads`` threads resolving at once, each on its own connection."""
    import threading
    per = [None] * threads

    def work(k):
        rng = np.random.default_rng(k)
        ids = ["synth/%07d" % i for i in rng.integers(0, n, calls)]
        for aid in ids[:200]:
            cat.resolve(aid)
        t = np.empty(calls, np.int64)
        for j, aid in enumerate(ids):
            t0 = time.perf_counter_ns()
            cat.resolve(aid)
            t[j] = time.perf_counter_ns() - t0
        per[k] = t
    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    times = np.concatenate(per)
    return {"p50_us": float(np.percentile(times, 50)) / 1e3, "p99_us": float(np.percentile(times, 99)) / 1e3,
            "calls": int(times.size)}


def postgres_main(args, sizes, emit, work, base) -> None:
    """The shared backend: PostgreSQL metadata (blobs in a local folder: resolve never reads them)."""
    server = None
    url = args.catalog
    if url is None:
        from sglang_mint.dev.pg_server import PostgresServer
        server = PostgresServer().start()
        url = server.create_database("mint_bench")
    try:
        cat = init_catalog(url, base, blobs=os.path.join(work, "blobs"), cache_dir=os.path.join(work, "local"))
        pg = {"backend": "postgres", "server": "throwaway, loopback, fsync on" if server else "given URL"}
        have = 0
        for n in sizes:
            rep = synth(cat, n - have, start=have, shared=True, progress=False)
            have = n
            emit("pg_metadata_fill_rate", rep["rate_per_s"], "entries/s",
                 {**pg, "mode": "shared-payload, COPY per 1024", "from": n - rep["count"], "to": n})
            cat.close()
            t0 = time.perf_counter()
            cat = open_catalog(url, cache_dir=os.path.join(work, "local"))
            cat.resolve("synth/0000000")
            emit("pg_open_time", (time.perf_counter() - t0) * 1e3, "ms", {**pg, "entries": n})
            cat.store.conn().execute("VACUUM ANALYZE adapters")
            cat.store.conn().execute("VACUUM ANALYZE revisions")
            for pop in ("uniform", "zipf"):
                lat = resolve_latency(cat, n, pop)
                setup = {**pg, "entries": n, "popularity": pop, "calls": lat["calls"], "threads": 1}
                emit("pg_resolve_p50", lat["p50_us"], "us", setup)
                emit("pg_resolve_p99", lat["p99_us"], "us", setup, "< 1 ms at 10^6" if n >= 10**6 else None,
                     lat["p99_us"] < 1000 if n >= 10**6 else None)
            lat = resolve_threads(cat, n, 4)
            setup = {**pg, "entries": n, "popularity": "uniform", "calls": lat["calls"], "threads": 4}
            emit("pg_resolve_p50", lat["p50_us"], "us", setup)
            emit("pg_resolve_p99", lat["p99_us"], "us", setup)
        emit("pg_db_size", cat.stats()["db_bytes"] / 2**20, "MiB", {**pg, "entries": have})
        cat.close()
    finally:
        if server is not None:
            server.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--real", type=int, default=10000, help="N for the real-mode synth rate")
    ap.add_argument("--peft", type=int, default=200, help="PEFT folders for the import rate")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "catalog_bench.jsonl"))
    ap.add_argument("--workdir", default="/tmp")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite",
                    help="postgres: measure a throwaway PostgreSQL server on loopback (or --catalog)")
    ap.add_argument("--catalog", metavar="URL", help="postgresql://... of an EMPTY database to measure")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    work = tempfile.mkdtemp(prefix="mint-catalog-bench-", dir=args.workdir)
    common = {"bench": "catalog", "machine": machine(), "git_commit": git_commit(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    out = open(args.out, "a")

    # Every rate says which it is: the headline import rate is the real one.
    REAL, METADATA_ONLY = "real distinct adapters", "metadata only (shared payload)"

    def emit(metric, value, unit, setup, target=None, met=None, label=None):
        line = {**common, "metric": metric, "value": round(value, 3), "unit": unit, "setup": setup}
        if label is not None:
            line["label"] = label
        if target is not None:
            line.update(target=target, met=met)
        out.write(json.dumps(line) + "\n")
        out.flush()
        print(f"{metric:34s} {value:12.3f} {unit:10s} {json.dumps(setup)}"
              + (f"  target {target}: {'MET' if met else 'MISSED'}" if target else ""))

    try:
        base = os.path.join(work, "tiny")
        os.makedirs(base)
        with open(os.path.join(base, "config.json"), "w") as f:
            json.dump(TINY, f)
        if args.backend == "postgres" or args.catalog:
            postgres_main(args, sizes, emit, work, base)
            return

        # 1. real-mode synth: distinct loadable adapters
        cat = init_catalog(os.path.join(work, "real"), base)
        rep = synth(cat, args.real, progress=False)
        emit("synth_real_rate", rep["rate_per_s"], "entries/s",
             {"mode": "real", "count": args.real, "bytes_per_adapter": rep["bytes_per_adapter"]},
             label=REAL)
        # 2. PEFT folder import, one publish (two fsyncs + commit) per folder
        folders = []
        for i in range(args.peft):
            r = cat.resolve("synth/%07d" % i)
            folders.append(shutil.copytree(r.local_path(), os.path.join(work, "peft", f"ad{i:04d}")))
        t0 = time.perf_counter()
        cat.import_folders(folders, namespace="imported", progress=False)
        dt = time.perf_counter() - t0
        emit("peft_folder_import_rate", args.peft / dt, "entries/s", {"count": args.peft, "mode": "publish each"},
             label=REAL)
        cat.close()
        shutil.rmtree(os.path.join(work, "real"))

        # 3. metadata scaling: one catalog grown through the sizes (shared payload)
        path = os.path.join(work, "meta")
        cat = init_catalog(path, base)
        have = 0
        for n in sizes:
            rep = synth(cat, n - have, start=have, shared=True, progress=False)
            have = n
            emit("metadata_import_rate", rep["rate_per_s"], "entries/s",
                 {"mode": "shared-payload", "from": n - (rep["count"]), "to": n},
                 ">= 20000 entries/s", rep["rate_per_s"] >= 20000, label=METADATA_ONLY)
            cat.close()
            cat = open_catalog(path)
            for pop in ("uniform", "zipf"):
                lat = resolve_latency(cat, n, pop)
                setup = {"entries": n, "popularity": pop, "calls": lat["calls"], "threads": 1}
                emit("resolve_p50", lat["p50_us"], "us", setup)
                emit("resolve_p99", lat["p99_us"], "us", setup, "< 50 us at 10^6" if n >= 10**6 else None,
                     lat["p99_us"] < 50 if n >= 10**6 else None)
            probe = subprocess.run([sys.executable, "-c", PROBE, path, "synth/0000000", str(n)],
                                   capture_output=True, text=True, cwd=ROOT)
            p = json.loads(probe.stdout)
            emit("open_time", p["open_s"] * 1e3, "ms", {"entries": n, "fresh_process": True},
                 "< 100 ms", p["open_s"] < 0.1)
            rss = (p["rss_after"] - p["rss_before"]) / 2**20
            emit("catalog_rss", rss, "MiB", {"entries": n, "after_resolves": 100000,
                                             "process_rss_MiB": round(p["rss_after"] / 2**20, 1)},
                 "< 100 MB", rss < 100)
        s = cat.stats()
        emit("db_size", s["db_bytes"] / 2**20, "MiB", {"entries": have})
        cat.close()
    finally:
        out.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
