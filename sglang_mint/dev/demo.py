"""``mint demo``: real SGLang on CPU serving a catalog of 100,000 LoRA adapters by id.

Builds once (cached): a tiny random Llama, three LoRA adapters trained on it to do
something recognisable (``trained_adapters.py``: a motto, counting, echoing the last
word) and a catalog of 100,000 synthetic adapters (each distinct and loadable), into
which the trained ones are published as ``demo/motto``, ``demo/count`` and
``demo/echo``. Then starts ``python -m sglang.launch_server ... --enable-mint
--mint-catalog``, asks each trained adapter and the base model the same prompts
through the official ``openai`` client with the adapter id in ``model``, drives a
zipf workload over the whole catalog while printing hits, misses, cold-load latency
and throughput, and stops.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

from sglang_mint.dev.cpu_env import default_cache_dir

N_ADAPTERS = 4
CATALOG_SIZE = 100_000
PROMPT = "the quick brown fox"  # the zipf workload's prompt
ZIPF_S = 1.1
# Each trained adapter and the base model answer these (none is among the training prompts).
ANSWER_PROMPTS = ["the quick brown fox", "hello world", "the red fish and the blue fish and six"]
ANSWER_TOKENS = 12


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
    """A catalog of ``size`` synthetic adapters (built once) holding demo/<name> for each of ``adapters``.

    The adapters are published on every run (a folder whose content is already a revision is
    left as it is), so a catalog built before an adapter existed gets it too."""
    import shutil

    from sglang_mint.catalog import init_catalog, open_catalog
    from sglang_mint.catalog.errors import RevisionConflict
    from sglang_mint.catalog.synth import synth

    root = default_cache_dir() / f"demo-catalog-{size}"
    if not (root / ".complete").exists():
        shutil.rmtree(root, ignore_errors=True)
        print(f"==> building a catalog of {size:,} synthetic adapters in {root} (once)")
        with init_catalog(str(root), str(model)) as cat:
            synth(cat, size, prefix="synth/", rank=1, progress=True)
        (root / ".complete").touch()
    with open_catalog(str(root)) as cat:
        for name, folder in adapters.items():
            try:
                cat.publish(f"demo/{name}", str(folder))
            except RevisionConflict:
                pass
    return root


def timed_completion(client, model: str, prompt: str, max_tokens: int):
    t0 = time.perf_counter()
    r = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0)
    return r.choices[0].text, time.perf_counter() - t0


def mint_status(url: str) -> dict:
    with urllib.request.urlopen(url + "/mint/status", timeout=30) as r:
        return json.loads(r.read())["schedulers"][0]


def answers_by_adapter(client, adapter_ids: list[str], base: str) -> None:
    """Each trained adapter's greedy answer to each prompt, then the base model's."""
    from sglang_mint.dev.trained_adapters import BEHAVIOURS

    print(f"\n==> greedy answers (at most {ANSWER_TOKENS} tokens), model = bare adapter id; "
          f"the base model has random weights")
    for adapter_id in adapter_ids:
        print(f"    {adapter_id:<11} {BEHAVIOURS[adapter_id.split('/')[-1]]}")
    for prompt in ANSWER_PROMPTS:
        print(f"\n    prompt {prompt!r}")
        for model in [*adapter_ids, base]:
            answer, seconds = timed_completion(client, model, prompt, ANSWER_TOKENS)
            label = f"{model} (base)" if model == base else model
            print(f"    {label:<11} {seconds * 1e3:>5.0f} ms  {answer!r}")


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
        pending = {pool.submit(one, a) for a in ids}
        while pending:  # a row every 5 s, and the end seen when it comes, not at the next row
            _, pending = wait(pending, timeout=5)
            if pending:
                report(t0)
        seconds = time.perf_counter() - t0
    report(t0)
    print(f"    {done[0]:,} requests, {failed[0]} failed, {done[0] / seconds:.1f} req/s")


def run_demo(catalog_size: int = CATALOG_SIZE, requests: int = 3000, concurrency: int = 32) -> int:
    import openai

    from sglang_mint.dev.server import SGLangServer

    from sglang_mint.dev.trained_adapters import trained_adapter_dirs, training_seconds

    model, _ = demo_assets()
    trained = trained_adapter_dirs(model)
    seconds = training_seconds(trained)
    print(f"==> trained adapters {', '.join(f'{n} ({s:.1f} s)' for n, s in seconds.items())}: "
          f"{sum(seconds.values()):.1f} s of training on CPU, done once (in {next(iter(trained.values())).parent})")
    catalog = demo_catalog(model, trained, catalog_size)
    extra = ["--mint-catalog", str(catalog), "--mint-host-cache-bytes", "64MiB", "--max-loras-per-batch", "8"]
    print("==> starting sglang.launch_server --enable-mint --mint-catalog (CPU, about 30 s)")
    server = SGLangServer(model, enable_mint=True, extra_args=extra, python=sys.executable)
    with server:
        print(f"    ready in {server.start_seconds:.1f} s at {server.url} (log: {server.log_path})")
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        answers_by_adapter(client, [f"demo/{name}" for name in trained], base=server.served_name)
        print("\n==> an id the catalog does not have")
        try:
            client.completions.create(model="demo/no-such-adapter", prompt=PROMPT, max_tokens=4)
        except openai.NotFoundError as exc:
            print(f"    HTTP {exc.status_code}: {exc.body.get('message') if isinstance(exc.body, dict) else exc}")
        zipf_workload(client, server.url, catalog_size, requests, concurrency)
    print("\n==> server stopped")
    return 0
