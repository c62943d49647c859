"""``mint demo``: real SGLang on CPU serving LoRA adapters named by bare id.

Builds (once, cached) a tiny random Llama and a few PEFT adapters, starts
``python -m sglang.launch_server ... --enable-mint``, sends requests through
the official ``openai`` client with the adapter id in ``model``, prints the
answers and per-adapter latency, and stops the server.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

from sglang_mint.dev.cpu_env import default_cache_dir

N_ADAPTERS = 4
REPEATS = 3
MAX_TOKENS = 16
PROMPT = "the quick brown fox"


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


def timed_completion(client, model: str):
    t0 = time.perf_counter()
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                  extra_body={"ignore_eos": True})
    return r.choices[0].text, time.perf_counter() - t0


def run_demo() -> int:
    import openai

    from sglang_mint.dev.server import SGLangServer

    model, adapters = demo_assets()
    print(f"==> starting sglang.launch_server --enable-mint with {len(adapters)} adapters (CPU, about 30 s)")
    server = SGLangServer(model, lora_paths=adapters, enable_mint=True, python=sys.executable)
    with server:
        print(f"    ready in {server.start_seconds:.1f} s at {server.url} (log: {server.log_path})")
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0)
        print(f"\n==> {MAX_TOKENS}-token completions of {PROMPT!r}, model = bare adapter id")
        print(f"    {'model':<12} {'median ms':>9}  answer (random weights: the text is noise, but each adapter's own)")
        for name in ["tiny", *adapters]:
            answers, seconds = zip(*(timed_completion(client, name) for _ in range(REPEATS)))
            assert len(set(answers)) == 1, "greedy answers differ between repeats"
            print(f"    {name:<12} {statistics.median(seconds) * 1e3:>9.1f}  {answers[0]!r}")
        chat = client.chat.completions.create(
            model=next(iter(adapters)), messages=[{"role": "user", "content": "hello"}], max_tokens=8, temperature=0
        )
        print(f"\n==> chat completion, model={next(iter(adapters))!r}: {chat.choices[0].message.content!r}")
        print("\n==> an id the server does not know")
        try:
            client.completions.create(model="no-such-adapter", prompt=PROMPT, max_tokens=4)
        except openai.NotFoundError as exc:
            print(f"    HTTP {exc.status_code}: {exc.body.get('message') if isinstance(exc.body, dict) else exc}")
    print("\n==> server stopped")
    return 0
