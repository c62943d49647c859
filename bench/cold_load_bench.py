"""Cold loads against stock SGLang: warm-path isolation, cold overhead, sweep, handoff.

One run, the same machine, the tiny model on CPU:

  mint    --enable-mint --mint-catalog: a request names any catalog adapter;
          a cold one is read on background threads while other requests run.
  stock   stock SGLang (our plugin loaded only for its CPU fix, --enable-mint
          off): each cold adapter is loaded with POST /load_lora_adapter
          before its request, --max-loaded-loras as its LRU.

Figures (JSON lines in bench/results/cold_load_bench.jsonl, plot in
bench/results/cold_load_bench.png):
  isolation  p50/p99 latency of steady traffic on 4 warm adapters, alone,
             during a storm of distinct cold adapters (ratio storm/alone), and
             during a control storm of as many requests on adapters already in
             memory: cold/warm storm is what loading itself costs warm traffic
  overhead   (mint) time to first token of a cold request minus the raw read
             time of its file, and minus the same adapter's warm TTFT
  sweep      N distinct adapters served once each: adapters/s, latency p50/p99
  handoff    (mint) catalog publish returning -> first token of the new revision

    python bench/cold_load_bench.py [--storm 1000] [--sweep 10000] [--stock-sweep 1000]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

from _common import RESULTS, append_result
from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.dev.cpu_env import default_cache_dir
from sglang_mint.dev.demo import demo_assets
from sglang_mint.dev.server import SGLangServer
from sglang_mint.dev.tiny import write_tiny_adapters

PROMPT = "the quick brown fox"
MAX_TOKENS = 8
WARM = [f"synth/{i:07d}" for i in range(4)]
CONCURRENCY = 16


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(values):
    return {"n": len(values), "p50_ms": round(pct(values, 0.5) * 1e3, 1), "p99_ms": round(pct(values, 0.99) * 1e3, 1)}


def bench_catalog(model_dir, count: int) -> Path:
    root = default_cache_dir() / f"bench-catalog-{count}"
    if not (root / ".complete").exists():
        import shutil

        shutil.rmtree(root, ignore_errors=True)
        with init_catalog(str(root), str(model_dir)) as cat:
            synth(cat, count, prefix="synth/", rank=1, progress=True)
        (root / ".complete").touch()
    return root


def local_paths(catalog: Path, ids):
    with open_catalog(str(catalog)) as cat:
        return {a: str(cat.resolve(a).local_path()) for a in ids}


class Traffic:
    """Closed-loop clients on the warm adapters, recording (start time, latency)."""

    def __init__(self, client, models):
        self.client, self.models = client, models
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(m,), daemon=True) for m in models]

    def _run(self, model):
        while not self.stop.is_set():
            t0 = time.perf_counter()
            self.client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                           extra_body={"ignore_eos": True})
            self.samples.append((t0, time.perf_counter() - t0))

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join()

    def between(self, t0, t1):
        return [lat for start, lat in self.samples if t0 <= start < t1]


def run_isolation(client, warm_models, storms: dict, alone_s):
    """Warm traffic alone, then during each storm in turn: {name: (fn, items)}.

    ``cold`` is the issue's figure. ``warm`` is its control: as many requests at the same
    concurrency on adapters already in memory, so the storm's own compute (and its share of
    the batch's LoRA slots) is the same and only the loading differs.
    """
    windows = {}
    with Traffic(client, warm_models) as traffic:
        time.sleep(2.0)  # warm-up
        t0 = time.perf_counter()
        time.sleep(alone_s)
        windows["alone"] = (t0, time.perf_counter())
        for name, (fn, items) in storms.items():
            t0 = time.perf_counter()
            with ThreadPoolExecutor(CONCURRENCY) as pool:
                list(pool.map(fn, items))
            windows[name] = (t0, time.perf_counter())
    lat = {name: traffic.between(*w) for name, w in windows.items()}
    out = {name: {**summary(v), "window_s": round(windows[name][1] - windows[name][0], 2)} for name, v in lat.items()}
    p99 = {name: pct(v, 0.99) for name, v in lat.items()}
    out["p99_ratio"] = round(p99["cold"] / p99["alone"], 3)
    out["p99_ratio_warm_storm"] = round(p99["warm"] / p99["alone"], 3)
    out["p99_ratio_cold_vs_warm_storm"] = round(p99["cold"] / p99["warm"], 3)
    return out, lat


def timed(fn, item):
    t0 = time.perf_counter()
    fn(item)
    return time.perf_counter() - t0


def run_sweep(fn, items):
    t0 = time.perf_counter()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        lat = list(pool.map(lambda it: timed(fn, it), items))
    wall = time.perf_counter() - t0
    return {"adapters": len(items), "adapters_per_s": round(len(items) / wall, 1), **summary(lat)}


def ttft(client, model) -> float:
    t0 = time.perf_counter()
    stream = client.completions.create(model=model, prompt=PROMPT, max_tokens=2, temperature=0, stream=True)
    for _ in stream:
        first = time.perf_counter() - t0
        break
    for _ in stream:
        pass
    return first


def mint_phase(model_dir, catalog, args, tmp: Path):
    extra = ["--mint-catalog", str(catalog), "--mint-host-cache-bytes", "256MiB", "--max-loras-per-batch", "8"]
    with SGLangServer(model_dir, enable_mint=True, extra_args=extra, python=sys.executable) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        for m in WARM:
            client.completions.create(model=m, prompt=PROMPT, max_tokens=1)

        def cold_request(adapter_id):
            client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True})

        storm_ids = [f"synth/{i:07d}" for i in range(100, 100 + args.storm)]
        control = [f"synth/{i:07d}" for i in range(4, 20)]
        for m in control:
            client.completions.create(model=m, prompt=PROMPT, max_tokens=1)
        iso, lat = run_isolation(client, WARM, {
            "cold": (cold_request, storm_ids),
            "warm": (cold_request, [control[i % len(control)] for i in range(args.storm)]),
        }, args.alone_s)

        # Cold overhead: fresh adapters, one at a time.
        fresh = [f"synth/{i:07d}" for i in range(50, 90)]
        paths = local_paths(catalog, fresh)
        cold, warm, reads = [], [], []
        for adapter_id in fresh:
            cold.append(ttft(client, adapter_id))
            warm.append(ttft(client, adapter_id))
            t0 = time.perf_counter()
            for f in Path(paths[adapter_id]).iterdir():
                f.read_bytes()
            reads.append(time.perf_counter() - t0)
        overhead = {
            "cold_ttft": summary(cold), "warm_ttft": summary(warm), "file_read": summary(reads),
            "cold_minus_read_p50_ms": round((statistics.median(cold) - statistics.median(reads)) * 1e3, 1),
            "cold_minus_warm_p50_ms": round((statistics.median(cold) - statistics.median(warm)) * 1e3, 1),
        }

        sweep_ids = [f"synth/{i:07d}" for i in range(args.storm + 200, args.storm + 200 + args.sweep)]
        sweep = run_sweep(cold_request, sweep_ids)

        # Handoff: publish -> first token of the new revision.
        folders = write_tiny_adapters(model_dir, tmp / "handoff", count=6, seed=11)
        handoff = []
        with open_catalog(str(catalog)) as cat:
            target = "handoff/bot"
            try:
                cat.publish(target, str(folders[0]))
            except Exception:
                pass
            client.completions.create(model=target, prompt=PROMPT, max_tokens=1)
            for folder in folders[1:]:
                try:
                    cat.publish(target, str(folder))
                except Exception:
                    continue  # already a revision from an earlier run
                t0 = time.perf_counter()
                handoff.append(ttft(client, target))
        status = json_get(server.url + "/mint/status")
    return {"isolation": iso, "overhead": overhead, "sweep": sweep,
            "handoff": summary(handoff) if handoff else None, "status": status}, lat


def stock_phase(model_dir, catalog, args):
    warm_paths = local_paths(catalog, WARM)
    names = {m: m.replace("/", "-") for m in WARM}
    lora_paths = {names[m]: p for m, p in warm_paths.items()}
    extra = ["--max-loaded-loras", "64", "--max-loras-per-batch", "8"]
    with SGLangServer(model_dir, enable_mint=False, lora_paths=lora_paths, extra_args=extra,
                      python=sys.executable) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        warm_models = [f"tiny:{names[m]}" for m in WARM]

        def load_and_request(item):
            name, path = item
            body = ('{"lora_name": "%s", "lora_path": "%s"}' % (name, path)).encode()
            req = urllib.request.Request(server.url + "/load_lora_adapter", data=body,
                                         headers={"content-type": "application/json"})
            urllib.request.urlopen(req, timeout=600).read()
            client.completions.create(model=f"tiny:{name}", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True})

        storm_ids = [f"synth/{i:07d}" for i in range(100, 100 + args.storm)]
        storm_items = [(a.replace("/", "-"), p) for a, p in local_paths(catalog, storm_ids).items()]
        control = [(a.replace("/", "-"), p) for a, p in local_paths(catalog, [f"synth/{i:07d}" for i in range(4, 20)]).items()]
        for item in control:
            load_and_request(item)

        def warm_request(item):
            client.completions.create(model=f"tiny:{item[0]}", prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                      extra_body={"ignore_eos": True})

        iso, lat = run_isolation(client, warm_models, {
            "cold": (load_and_request, storm_items),
            "warm": (warm_request, [control[i % len(control)] for i in range(args.storm)]),
        }, args.alone_s)

        lo = args.storm + 200
        sweep_ids = [f"synth/{i:07d}" for i in range(lo, lo + args.stock_sweep)]
        sweep_items = [(a.replace("/", "-") + "-s", p) for a, p in local_paths(catalog, sweep_ids).items()]
        sweep = run_sweep(load_and_request, sweep_items)
    return {"isolation": iso, "sweep": sweep}, lat


def json_get(url):
    import json

    with urllib.request.urlopen(url) as r:
        return json.loads(r.read())


def plot(curves, path: Path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in curves.items():
        s = sorted(v * 1e3 for v in values)
        if s:
            ax.plot(s, [(i + 1) / len(s) for i in range(len(s))], label=label)
    ax.set_xscale("log")
    ax.set_xlabel("warm-adapter request latency (ms, log)")
    ax.set_ylabel("fraction of requests")
    ax.set_title("Warm-adapter latency: alone, warm storm, cold storm (tiny model, CPU)", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot: {path}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--storm", type=int, default=1000, help="distinct cold adapters in the storm (default 1000)")
    p.add_argument("--sweep", type=int, default=10_000, help="mint sweep size (default 10000)")
    p.add_argument("--stock-sweep", type=int, default=1000, help="stock sweep size (default 1000)")
    p.add_argument("--alone-s", type=float, default=20.0, help="seconds of warm-only traffic (default 20)")
    a = p.parse_args()
    import tempfile

    model_dir, _ = demo_assets()
    catalog = bench_catalog(model_dir, a.storm + 200 + max(a.sweep, a.stock_sweep))
    with tempfile.TemporaryDirectory() as tmp:
        mint, mint_curves = mint_phase(model_dir, catalog, a, Path(tmp))
    print("mint:", mint, flush=True)
    stock, stock_curves = stock_phase(model_dir, catalog, a)
    print("stock:", stock, flush=True)
    record = append_result("cold_load_bench", {
        "bench": "cold_load_bench", "model": "tiny-llama (2 layers, hidden 128, fp32)",
        "adapters": "synthetic rank-1, all 7 modules, fp16, distinct", "storm": a.storm, "sweep": a.sweep,
        "stock_sweep": a.stock_sweep, "concurrency": CONCURRENCY, "mint": mint, "stock": stock,
        "targets": {"isolation_p99_ratio": 1.10, "cold_minus_read_p50_ms": 50},
    })
    plot({f"{who} {phase}": curves[phase] for who, curves in (("mint", mint_curves), ("stock", stock_curves))
          for phase in ("alone", "warm", "cold")}, RESULTS / "cold_load_bench.png")
    for who, r in (("mint", mint), ("stock", stock)):
        iso = r["isolation"]
        print(f"\n{who}: warm p99 alone {iso['alone']['p99_ms']} ms, during warm storm {iso['warm']['p99_ms']} ms, "
              f"during cold storm {iso['cold']['p99_ms']} ms; cold storm {iso['cold']['window_s']} s")
        print(f"   p99 ratio cold storm/alone {iso['p99_ratio']} (target <= 1.10), "
              f"cold/warm storm {iso['p99_ratio_cold_vs_warm_storm']}")
    print(f"cold overhead p50: TTFT - read {mint['overhead']['cold_minus_read_p50_ms']} ms, "
          f"TTFT - warm TTFT {mint['overhead']['cold_minus_warm_p50_ms']} ms  (target <= 50)")
    print(f"sweep: mint {mint['sweep']}  stock {stock['sweep']}")
    print(f"handoff publish->first token: {mint['handoff']}")
    return 0 if record else 1


if __name__ == "__main__":
    sys.exit(main())
