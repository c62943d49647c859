"""Does loading and enabling sglang-mint cost start time or request latency?

One run starts real SGLang servers on the tiny model, one after another, and
for each measures the time from launch to a healthy server and the median
latency of a 16-token completion (greedy, ignore_eos, after warm-up):

  stock            our plugin not loaded (SGLANG_PLUGINS excludes it), no LoRA:
                   on a CPU machine stock SGLang's LoRA path cannot start
                   (pinned memory), so this is the base model alone
  plugin-loaded    plugin loaded, no --enable-mint, no LoRA
  lora-no-mint     plugin loaded (its CPU fix makes LoRA run), LoRA on,
                   no --enable-mint; adapters as <served>:<id>
  mint             --enable-mint, LoRA on; adapters by bare id

Rounds alternate the order of the configurations, so drift on a shared
machine does not favour one. Results: bench/results/plugin_overhead.jsonl.

    python bench/plugin_overhead.py [--requests 20] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from importlib.metadata import entry_points

import openai

from _common import append_result
from sglang_mint.dev.demo import demo_assets
from sglang_mint.dev.server import SGLangServer

MAX_TOKENS = 16
PROMPT = "the quick brown fox"


def configs(adapters):
    others = [ep.name for ep in entry_points(group="sglang.srt.plugins") if ep.name != "mint"]
    without_mint = {"SGLANG_PLUGINS": ",".join(others) or "no-plugin"}
    return {
        "stock": dict(enable_lora=False, enable_mint=False, env=without_mint),
        "plugin-loaded": dict(enable_lora=False, enable_mint=False),
        "lora-no-mint": dict(lora_paths=adapters, enable_mint=False),
        "mint": dict(lora_paths=adapters, enable_mint=True),
    }


def latency_ms(client, model: str, n: int) -> float:
    for _ in range(3):
        client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0)
    samples = []
    for _ in range(n):
        t0 = time.perf_counter()
        client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                  extra_body={"ignore_eos": True})
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3


def measure(name: str, kwargs: dict, adapters: dict, model_dir, n: int) -> dict:
    with SGLangServer(model_dir, python=sys.executable, **kwargs) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0)
        row = {"config": name, "start_s": round(server.start_seconds, 2),
               "base_ms": round(latency_ms(client, "tiny", n), 1)}
        if kwargs.get("lora_paths"):
            adapter = next(iter(adapters))
            model = adapter if kwargs.get("enable_mint") else f"tiny:{adapter}"
            row["adapter_ms"] = round(latency_ms(client, model, n), 1)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=20, help="timed requests per model (default 20)")
    p.add_argument("--rounds", type=int, default=2, help="rounds, alternating the order (default 2)")
    a = p.parse_args()
    model_dir, adapters = demo_assets()
    cfgs = configs(adapters)
    rows = []
    for rnd in range(a.rounds):
        order = list(cfgs) if rnd % 2 == 0 else list(reversed(cfgs))
        for name in order:
            row = measure(name, cfgs[name], adapters, model_dir, a.requests)
            print(f"round {rnd}: {row}", flush=True)
            rows.append(row)
    summary = {}
    for name in cfgs:
        mine = [r for r in rows if r["config"] == name]
        summary[name] = {k: round(statistics.median(r[k] for r in mine), 2)
                         for k in ("start_s", "base_ms", "adapter_ms") if k in mine[0]}
    stock = summary["stock"]
    for name, s in summary.items():
        s["start_vs_stock"] = round(s["start_s"] / stock["start_s"], 3)
        s["base_ms_vs_stock"] = round(s["base_ms"] / stock["base_ms"], 3)
    record = append_result("plugin_overhead", {
        "bench": "plugin_overhead", "model": "tiny-llama (2 layers, hidden 128, fp32)",
        "max_tokens": MAX_TOKENS, "requests": a.requests, "rounds": a.rounds, "rows": rows, "summary": summary,
    })
    print("\nconfig          start s   base ms  adapter ms   (start, base) vs stock")
    for name, s in record["summary"].items():
        print(f"{name:<14} {s['start_s']:>8.2f} {s['base_ms']:>9.1f} {s.get('adapter_ms', float('nan')):>11.1f}"
              f"   ({s['start_vs_stock']:.3f}, {s['base_ms_vs_stock']:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
