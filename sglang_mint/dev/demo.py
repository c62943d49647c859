"""``mint demo``: real SGLang on CPU serving a catalog of 100,000 LoRA adapters by id.

Builds once (cached): a tiny random Llama, a few PEFT adapters for it and a
catalog with them plus 100,000 synthetic adapters (each distinct and
loadable). Then starts ``python -m sglang.launch_server ... --enable-mint
--mint-catalog``, sends requests through the official ``openai`` client with
the adapter id in ``model``, drives a zipf workload over the whole catalog
while printing hits, misses, cold-load latency and throughput, and stops.
"""

from __future__ import annotations

import json
import random
import statistics
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sglang_mint.dev.cpu_env import default_cache_dir

N_ADAPTERS = 4
CATALOG_SIZE = 100_000
REPEATS = 3
MAX_TOKENS = 16
PROMPT = "the quick brown fox"
ZIPF_S = 1.1


def demo_assets(seed: int = 0) -> tuple[Path, dict[str, Path]]:
    """The tiny model and adapters, built once per seed under the cache folder."""
    from sglang_mint.dev.tiny import adapter_name, write_tiny_adapters, write_tiny_llama

    root = default_cache_dir() / f"demo-assets-seed{seed}"
    model, adapters = root / "tiny-llama", root / "adapters"
    if not (root / ".complete").exists():
        print(f"==> building the tiny model and {N_ADAPTERS} adapters in {root}")
        write_tiny_llama(model, seed=seed)
        write_tiny_adapters(model, adapters, N_ADAPTERS, seed=seed)
        (root / ".complete").touch()
    return model, {adapter_name(i): adapters / adapter_name(i) for i in range(N_ADAPTERS)}


def demo_catalog(model: Path, adapters: dict[str, Path], size: int) -> Path:
    """A catalog with demo/<name> for each tiny adapter and ``size`` synthetic ones (built once)."""
    import shutil

    from sglang_mint.catalog import init_catalog
    from sglang_mint.catalog.synth import synth

    root = default_cache_dir() / f"demo-catalog-{size}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"==> building a catalog of {size:,} synthetic adapters in {root} (once)")
        with init_catalog(str(root), str(model)) as cat:
            for name, folder in adapters.items():
                cat.publish(f"demo/{name}", str(folder))
            synth(cat, size, prefix="synth/", rank=1, progress=True)
        (root / ".complete").touch()
    return root


def timed_completion(client, model: str):
    t0 = time.perf_counter()
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                  extra_body={"ignore_eos": True})
    return r.choices[0].text, time.perf_counter() - t0


def mint_status(url: str) -> dict:
    with urllib.request.urlopen(url + "/mint/status", timeout=30) as r:
        return json.loads(r.read())["schedulers"][0]


def by_bare_id(client, names: list[str]) -> None:
    print(f"\n==> {MAX_TOKENS}-token completions of {PROMPT!r}, model = bare adapter id")
    print(f"    {'model':<16} {'median ms':>9}  answer (random weights: noise, but each adapter's own)")
    for name in names:
        answers, seconds = zip(*(timed_completion(client, name) for _ in range(REPEATS)))
        assert len(set(answers)) == 1, "greedy answers differ between repeats"
        print(f"    {name:<16} {statistics.median(seconds) * 1e3:>9.1f}  {answers[0]!r}")


def zipf_workload(client, url: str, size: int, requests: int, concurrency: int) -> None:
    rng = random.Random(0)
    weights = [1.0 / (k + 1) ** ZIPF_S for k in range(size)]
    ids = [f"synth/{k:07d}" for k in rng.choices(range(size), weights=weights, k=requests)]
    print(f"\n==> zipf(s={ZIPF_S}) workload: {requests:,} requests over {size:,} adapters, "
          f"{concurrency} concurrent clients, {len(set(ids)):,} distinct adapters")
    print(f"    {'time':>5} {'done':>6} {'req/s':>6} {'hit rate':>8} {'cold loads':>10} "
          f"{'cold p50 ms':>11} {'cold p99 ms':>11} {'resident':>8} {'host MiB':>8}")
    done = [0]
    failed = [0]
    lock = threading.Lock()

    def one(adapter_id):
        try:
            client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=4, temperature=0)
        except Exception:
            with lock:
                failed[0] += 1
        with lock:
            done[0] += 1

    def report(t0):
        st = mint_status(url)
        elapsed = time.perf_counter() - t0
        ms = lambda v: "-" if v is None else f"{v * 1e3:.1f}"  # noqa: E731
        print(f"    {elapsed:>4.0f}s {done[0]:>6} {done[0] / elapsed:>6.1f} {st['hit_rate'] or 0:>8.1%} "
              f"{st['cold_loads']:>10} {ms(st['cold_load_p50_s']):>11} {ms(st['cold_load_p99_s']):>11} "
              f"{st['resident']:>8} {st['host_bytes'] / 2**20:>8.1f}", flush=True)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, a) for a in ids]
        while not all(f.done() for f in futures):
            time.sleep(5)
            report(t0)
    report(t0)
    print(f"    {done[0]:,} requests, {failed[0]} failed, {done[0] / (time.perf_counter() - t0):.1f} req/s")


def run_demo(catalog_size: int = CATALOG_SIZE, requests: int = 3000, concurrency: int = 32) -> int:
    import openai

    from sglang_mint.dev.server import SGLangServer

    model, adapters = demo_assets()
    catalog = demo_catalog(model, adapters, catalog_size)
    extra = ["--mint-catalog", str(catalog), "--mint-host-cache-bytes", "64MiB", "--max-loras-per-batch", "8"]
    print("==> starting sglang.launch_server --enable-mint --mint-catalog (CPU, about 30 s)")
    server = SGLangServer(model, enable_mint=True, extra_args=extra, python=sys.executable)
    with server:
        print(f"    ready in {server.start_seconds:.1f} s at {server.url} (log: {server.log_path})")
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        by_bare_id(client, ["tiny", *(f"demo/{name}" for name in adapters)])
        print("\n==> an id the catalog does not have")
        try:
            client.completions.create(model="demo/no-such-adapter", prompt=PROMPT, max_tokens=4)
        except openai.NotFoundError as exc:
            print(f"    HTTP {exc.status_code}: {exc.body.get('message') if isinstance(exc.body, dict) else exc}")
        zipf_workload(client, server.url, catalog_size, requests, concurrency)
    print("\n==> server stopped")
    return 0
