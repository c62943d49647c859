"""Cold loads, mint against stock SGLang doing the same work: isolation, warm-only latency, sweep, overhead.

One run, the same machine, the tiny model on CPU, one server at a time:

  mint    --enable-mint --mint-catalog: a request names any catalog adapter;
          a cold one is read on background threads while other requests run.
  stock   stock SGLang (our plugin loaded only for its CPU fix, --enable-mint
          off): each cold adapter is loaded with POST /load_lora_adapter
          before its request; --max-loaded-loras is its LRU.

What is equal between the two:
  adapters  the same distinct synthetic rank-1 adapters, the same files: stock
            loads the catalog's own revision folders, mint reads them from the
            catalog; the same ids in every phase (warm, control, storm, sweep).
  capacity  K adapters resident in host memory (--resident, default 256):
            stock's --max-loaded-loras is K; mint's --mint-host-cache-bytes is
            K times one adapter's host bytes as mint counts them (measured on a
            short sizing server first) plus half an adapter, so it holds K and
            not K+1. Storm and sweep name far more than K adapters: both evict.
  server    the same flags (--max-loras-per-batch 8, torch_native LoRA, ...).
  traffic   the same warm clients, storms, sweep size N, concurrency.

Figures (one JSON line in bench/results/cold_load_bench.jsonl; ``figures``
holds, for each, mint and stock with their spread, the target and met/missed;
plot in bench/results/cold_load_bench.png):
  isolation     p99 of steady traffic on 4 warm adapters during a storm of
                distinct cold adapters, divided by the same during a
                compute-matched storm of as many requests on adapters already
                in memory (target <= 1.1). Measured in --rounds rounds of
                (warm-only window, warm storm, cold storm); the spread is over
                rounds.
  warm only     p50/p99 of the same steady traffic with nothing else running.
  sweep         N distinct adapters served once each: adapters/s and latency.
  evictions     adapters evicted from host memory over the whole run.
  cold overhead time to first token of a cold request minus the raw read time
                of its files (target <= 50 ms p50); stock's includes its
                /load_lora_adapter call.
  handoff       (mint only) catalog publish returning -> first token of the new revision.

    python bench/cold_load_bench.py [--resident 256] [--sweep 2000] [--storm 900] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
import urllib.error
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
CONCURRENCY = 16
SERVER_FLAGS = ["--max-loras-per-batch", "8"]
TARGETS = {"isolation_p99_ratio": 1.10, "cold_minus_read_p50_ms": 50}


def sid(i: int) -> str:
    return f"synth/{i:07d}"


class Ids:
    """Which catalog adapters each phase uses: disjoint ranges, the same for mint and stock."""

    def __init__(self, storm: int, sweep: int):
        self.warm = [sid(i) for i in range(4)]
        self.control = [sid(i) for i in range(4, 20)]
        self.fresh = [sid(i) for i in range(50, 90)]  # cold overhead
        self.storm = [sid(i) for i in range(100, 100 + storm)]
        self.sweep = [sid(i) for i in range(100 + storm, 100 + storm + sweep)]
        self.count = 100 + storm + sweep


def pct(values, q):
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def summary(values):
    return {"n": len(values), "p50_ms": round(pct(values, 0.5) * 1e3, 1), "p99_ms": round(pct(values, 0.99) * 1e3, 1)}


def spread(values):
    """min / median / max of per-round values."""
    return {"min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3), "rounds": [round(v, 3) for v in values]}


def bench_catalog(model_dir, count: int) -> Path:
    """A catalog holding synth/0000000 .. synth/<count-1>.

    A bigger one made the same way (``synth`` with prefix "synth/", rank 1, seed 0, on the
    demo model: the same bytes per id) is reused, the demo's own 100,000 included."""
    root = default_cache_dir()
    for prefix in ("bench-catalog-", "demo-catalog-"):
        for folder in sorted(root.glob(prefix + "*"), key=lambda p: int(p.name.rsplit("-", 1)[1])):
            if int(folder.name.rsplit("-", 1)[1]) >= count and (folder / ".complete").exists():
                return folder
    folder = root / f"bench-catalog-{count}"
    import shutil

    shutil.rmtree(folder, ignore_errors=True)
    with init_catalog(str(folder), str(model_dir)) as cat:
        synth(cat, count, prefix="synth/", rank=1, progress=True)
    (folder / ".complete").touch()
    return folder


def local_paths(catalog: Path, ids):
    with open_catalog(str(catalog)) as cat:
        return {a: str(cat.resolve(a).local_path()) for a in ids}


def json_get(url):
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


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


class Server:
    """One server under test and the two ways it is asked for an adapter: ``warm`` (in memory) and ``cold``."""

    def __init__(self, who: str, server: SGLangServer, catalog: Path):
        self.who, self.server, self.catalog = who, server, catalog
        self.client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)

    def model(self, adapter_id: str) -> str:
        return adapter_id if self.who == "mint" else f"tiny:{adapter_id.replace('/', '-')}"

    def request(self, adapter_id: str, max_tokens: int = MAX_TOKENS):
        self.client.completions.create(model=self.model(adapter_id), prompt=PROMPT, max_tokens=max_tokens,
                                       temperature=0, extra_body={"ignore_eos": True})

    def load(self, adapter_id: str, path: str) -> bool:
        """Stock: POST /load_lora_adapter; False when the name is already loaded. Mint: nothing to do."""
        if self.who == "mint":
            return True
        body = json.dumps({"lora_name": adapter_id.replace("/", "-"), "lora_path": path}).encode()
        req = urllib.request.Request(self.server.url + "/load_lora_adapter", data=body,
                                     headers={"content-type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=600).read()
            return True
        except urllib.error.HTTPError as exc:
            if "already" in exc.read().decode(errors="replace"):
                return False
            raise

    def cold(self, item):
        adapter_id, path = item
        self.load(adapter_id, path)
        self.request(adapter_id)

    def ttft(self, adapter_id: str, path: str | None = None) -> float:
        t0 = time.perf_counter()
        if path is not None:
            self.load(adapter_id, path)
        stream = self.client.completions.create(model=self.model(adapter_id), prompt=PROMPT, max_tokens=2,
                                                temperature=0, stream=True)
        for _ in stream:
            first = time.perf_counter() - t0
            break
        for _ in stream:
            pass
        return first

    def evictions(self) -> int:
        if self.who == "mint":
            return sum(s["evictions"] for s in json_get(self.server.url + "/mint/status")["schedulers"])
        return self.server.log_path.read_text(errors="replace").count("Unloading least recently used LoRA adapter")


def pool_map(fn, items):
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        return list(pool.map(fn, items))


def run_isolation(srv: Server, ids: Ids, paths: dict, rounds: int, alone_s: float):
    """``rounds`` rounds of: warm-only window, warm storm, cold storm, all under the same warm traffic.

    The warm storm is the cold storm's control: as many requests at the same concurrency on the 16
    control adapters, made resident just before it (outside the windows; the previous cold storm
    evicted them), so the storm's compute and its share of the batch's LoRA slots are the same and
    only the loading differs."""
    chunk = len(ids.storm) // rounds
    windows: dict[str, list[tuple[float, float]]] = {"alone": [], "warm": [], "cold": []}
    with Traffic(srv.client, [srv.model(a) for a in ids.warm]) as traffic:
        time.sleep(2.0)  # warm-up
        for r in range(rounds):
            t0 = time.perf_counter()
            time.sleep(alone_s)
            windows["alone"].append((t0, time.perf_counter()))
            pool_map(srv.cold, [(a, paths[a]) for a in ids.control])  # resident again
            t0 = time.perf_counter()
            pool_map(srv.request, [ids.control[i % len(ids.control)] for i in range(chunk)])
            windows["warm"].append((t0, time.perf_counter()))
            t0 = time.perf_counter()
            pool_map(srv.cold, [(a, paths[a]) for a in ids.storm[r * chunk:(r + 1) * chunk]])
            windows["cold"].append((t0, time.perf_counter()))
    lat = {name: [traffic.between(*w) for w in ws] for name, ws in windows.items()}
    pooled = {name: [x for one in rs for x in one] for name, rs in lat.items()}
    out = {name: {**summary(pooled[name]), "window_s": round(sum(b - a for a, b in ws), 2),
                  "rounds_p50_ms": [summary(v)["p50_ms"] for v in lat[name]],
                  "rounds_p99_ms": [summary(v)["p99_ms"] for v in lat[name]]}
           for name, ws in windows.items()}
    ratio = lambda a, b: pct(a, 0.99) / pct(b, 0.99)  # noqa: E731
    out["p99_ratio_cold_vs_warm_storm"] = round(ratio(pooled["cold"], pooled["warm"]), 3)
    out["p99_ratio_cold_storm_vs_alone"] = round(ratio(pooled["cold"], pooled["alone"]), 3)
    out["p99_ratio_warm_storm_vs_alone"] = round(ratio(pooled["warm"], pooled["alone"]), 3)
    out["rounds_ratio_cold_vs_warm_storm"] = [round(ratio(c, w), 3) for c, w in zip(lat["cold"], lat["warm"])]
    return out, pooled


def run_sweep(srv: Server, ids: Ids, paths: dict, rounds: int):
    """Every sweep adapter once, at the same concurrency, in ``rounds`` chunks (adapters/s per chunk)."""
    lat, rates, wall = [], [], 0.0
    chunk = -(-len(ids.sweep) // rounds)

    def timed(item):
        t0 = time.perf_counter()
        srv.cold(item)
        return time.perf_counter() - t0

    for lo in range(0, len(ids.sweep), chunk):
        items = [(a, paths[a]) for a in ids.sweep[lo:lo + chunk]]
        t0 = time.perf_counter()
        lat += pool_map(timed, items)
        seconds = time.perf_counter() - t0
        wall += seconds
        rates.append(len(items) / seconds)
    return {"adapters": len(ids.sweep), "adapters_per_s": round(len(ids.sweep) / wall, 1),
            "chunks_adapters_per_s": [round(r, 1) for r in rates], **summary(lat)}


def run_overhead(srv: Server, ids: Ids, paths: dict):
    """Fresh adapters one at a time: cold TTFT (stock: load call + TTFT), warm TTFT, raw file read."""
    cold, warm, reads = [], [], []
    for adapter_id in ids.fresh:
        cold.append(srv.ttft(adapter_id, paths[adapter_id]))
        warm.append(srv.ttft(adapter_id))
        t0 = time.perf_counter()
        for f in Path(paths[adapter_id]).iterdir():
            f.read_bytes()
        reads.append(time.perf_counter() - t0)
    return {
        "cold_ttft": summary(cold), "warm_ttft": summary(warm), "file_read": summary(reads),
        "cold_minus_read_p50_ms": round((statistics.median(cold) - statistics.median(reads)) * 1e3, 1),
        "cold_minus_warm_p50_ms": round((statistics.median(cold) - statistics.median(warm)) * 1e3, 1),
    }


def run_handoff(srv: Server, model_dir, catalog: Path, tmp: Path):
    """Publish a new revision of one adapter -> first token served by it (mint only)."""
    folders = write_tiny_adapters(model_dir, tmp / "handoff", count=6, seed=11)
    handoff = []
    with open_catalog(str(catalog)) as cat:
        target = "handoff/bot"
        try:
            cat.publish(target, str(folders[0]))
        except Exception:  # noqa: BLE001 - already a revision from an earlier run
            pass
        srv.request(target, max_tokens=1)
        for folder in folders[1:]:
            try:
                cat.publish(target, str(folder))
            except Exception:  # noqa: BLE001 - already a revision from an earlier run
                continue
            handoff.append(srv.ttft(target))
    return summary(handoff) if handoff else None


def mint_adapter_bytes(model_dir, catalog: Path, ids: Ids) -> int:
    """One adapter's host bytes as mint's budget counts them, read from a short sizing server."""
    extra = ["--mint-catalog", str(catalog), *SERVER_FLAGS]
    with SGLangServer(model_dir, enable_mint=True, extra_args=extra, python=sys.executable) as server:
        srv = Server("mint", server, catalog)
        for a in ids.warm:
            srv.request(a, max_tokens=1)
        s = json_get(server.url + "/mint/status")["schedulers"][0]
    return -(-s["host_bytes"] // s["resident"])  # adapters of one shape all count the same


def phase(who: str, model_dir, catalog: Path, ids: Ids, a, paths: dict, tmp: Path, adapter_bytes: int):
    if who == "mint":
        budget = a.resident * adapter_bytes + adapter_bytes // 2
        server = SGLangServer(model_dir, enable_mint=True, python=sys.executable, extra_args=[
            "--mint-catalog", str(catalog), "--mint-host-cache-bytes", str(budget), *SERVER_FLAGS])
    else:
        server = SGLangServer(model_dir, enable_mint=False, python=sys.executable,
                              lora_paths={a_.replace("/", "-"): paths[a_] for a_ in ids.warm},
                              extra_args=["--max-loaded-loras", str(a.resident), *SERVER_FLAGS])
    with server:
        srv = Server(who, server, catalog)
        for m in ids.warm:
            srv.request(m, max_tokens=1)
        iso, lat = run_isolation(srv, ids, paths, a.rounds, a.alone_s)
        print(who, "isolation:", iso, flush=True)
        overhead = run_overhead(srv, ids, paths)
        sweep = run_sweep(srv, ids, paths, a.rounds)
        print(who, "sweep:", sweep, flush=True)
        evictions = srv.evictions()
        out = {"isolation": iso, "overhead": overhead, "sweep": sweep, "evictions": evictions,
               "server_args": server.args[3:]}
        if who == "mint":
            out["host_budget_bytes"] = budget
            out["handoff"] = run_handoff(srv, model_dir, catalog, tmp)
            out["status"] = json_get(server.url + "/mint/status")
    return out, lat


def figure(unit: str, target, mint: dict, stock: dict | None, better: str = "lower"):
    """One figure: mint and stock (``value`` and its spread), the target, and whether each meets it."""
    def met(side):
        if target is None or side is None:
            return None
        return "met" if (side["value"] <= target if better == "lower" else side["value"] >= target) else "missed"

    return {"unit": unit, "target": target, "better": better, "mint": mint, "stock": stock,
            "mint_met": met(mint), "stock_met": met(stock)}


def figures(mint: dict, stock: dict) -> dict:
    def iso_ratio(r):
        i = r["isolation"]
        return {"value": i["p99_ratio_cold_vs_warm_storm"], **spread(i["rounds_ratio_cold_vs_warm_storm"])}

    def alone(r, q):
        i = r["isolation"]["alone"]
        return {"value": i[f"{q}_ms"], **spread(i[f"rounds_{q}_ms"])}

    def sweep_rate(r):
        s = r["sweep"]
        return {"value": s["adapters_per_s"], **spread(s["chunks_adapters_per_s"])}

    def lat(section):
        return {"value": section["p50_ms"], "p50": section["p50_ms"], "p99": section["p99_ms"], "n": section["n"]}

    def overhead(r):
        o = r["overhead"]
        return {"value": o["cold_minus_read_p50_ms"], "cold_ttft_p50": o["cold_ttft"]["p50_ms"],
                "cold_ttft_p99": o["cold_ttft"]["p99_ms"], "read_p50": o["file_read"]["p50_ms"],
                "cold_minus_warm_p50": o["cold_minus_warm_p50_ms"]}

    return {
        "isolation_p99_ratio": figure("cold-storm p99 / warm-storm p99", TARGETS["isolation_p99_ratio"],
                                      iso_ratio(mint), iso_ratio(stock)),
        "warm_only_p50_ms": figure("ms", None, alone(mint, "p50"), alone(stock, "p50")),
        "warm_only_p99_ms": figure("ms", None, alone(mint, "p99"), alone(stock, "p99")),
        "warm_during_cold_storm_ms": figure("ms (value p50)", None, lat(mint["isolation"]["cold"]),
                                            lat(stock["isolation"]["cold"])),
        "warm_during_warm_storm_ms": figure("ms (value p50)", None, lat(mint["isolation"]["warm"]),
                                            lat(stock["isolation"]["warm"])),
        "sweep_adapters_per_s": figure("adapters/s", None, sweep_rate(mint), sweep_rate(stock), better="higher"),
        "sweep_latency_ms": figure("ms (value p50)", None, lat(mint["sweep"]), lat(stock["sweep"])),
        "evictions": figure("adapters", None, {"value": mint["evictions"]}, {"value": stock["evictions"]}),
        "cold_minus_read_p50_ms": figure("ms", TARGETS["cold_minus_read_p50_ms"], overhead(mint), overhead(stock)),
        "handoff_ms": figure("ms (value p50)", None, lat(mint["handoff"]) if mint.get("handoff") else None, None),
    }


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
    p.add_argument("--resident", type=int, default=256,
                   help="adapters resident in host memory, for both (default 256)")
    p.add_argument("--sweep", type=int, default=2000, help="distinct adapters in the sweep, for both (default 2000)")
    p.add_argument("--storm", type=int, default=900, help="distinct cold adapters over all storms (default 900)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of warm-only, warm storm, cold storm (default 3)")
    p.add_argument("--alone-s", type=float, default=8.0, help="seconds of warm-only traffic per round (default 8)")
    a = p.parse_args()
    import tempfile

    ids = Ids(a.storm, a.sweep)
    if a.storm // a.rounds <= a.resident or a.sweep <= a.resident:
        p.error("each cold storm and the sweep must name more adapters than --resident, so both evict")
    model_dir, _ = demo_assets()
    catalog = bench_catalog(model_dir, ids.count)
    paths = local_paths(catalog, ids.warm + ids.control + ids.fresh + ids.storm + ids.sweep)
    adapter_bytes = mint_adapter_bytes(model_dir, catalog, ids)
    print(f"mint counts {adapter_bytes} host bytes per adapter: budget for {a.resident}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        mint, mint_curves = phase("mint", model_dir, catalog, ids, a, paths, Path(tmp), adapter_bytes)
    stock, stock_curves = phase("stock", model_dir, catalog, ids, a, paths, Path(tmp), adapter_bytes)
    record = append_result("cold_load_bench", {
        "bench": "cold_load_bench", "model": "tiny-llama (2 layers, hidden 128, fp32)",
        "adapters": "synthetic rank-1, all 7 modules, fp16, distinct; the same files for mint and stock",
        "catalog": str(catalog), "resident": a.resident, "mint_adapter_host_bytes": adapter_bytes,
        "storm": a.storm, "sweep": a.sweep, "rounds": a.rounds, "alone_s_per_round": a.alone_s,
        "concurrency": CONCURRENCY, "figures": figures(mint, stock), "mint": mint, "stock": stock,
        "targets": TARGETS,
    })
    plot({f"{who} {name}": curves[name] for who, curves in (("mint", mint_curves), ("stock", stock_curves))
          for name in ("alone", "warm", "cold")}, RESULTS / "cold_load_bench.png")
    print()
    for name, f in record["figures"].items():
        m, s = f["mint"], f["stock"]
        print(f"{name:<26} mint {m and m['value']!s:>8}  stock {s and s['value']!s:>8}  target {f['target']!s:>5}"
              f"  mint {f['mint_met']}, stock {f['stock_met']}")
    return 0 if record else 1


if __name__ == "__main__":
    sys.exit(main())
