"""Do requests with costly stop patterns still hold every scheduler step from everyone else, against stock SGLang?

SGLang matches each request's ``stop_regex`` patterns against its output after every step, on the scheduler's
thread, with no bound (with mint: 20 ms a request at most, and the requests with patterns in a step share it,
each at least 1 ms). Two servers in one run, one after the other, on the tiny random Llama with LoRA
on: stock SGLang, then --enable-mint. Each gets:

- a plain /generate request alone (48 tokens): its seconds;
- ``--heavy`` requests at once, each writing "aaaa..." (its token biased up) with ``--patterns`` stop patterns
  of the form ``(a|aa){1,10}b`` (some 2 ms each on the output they read, none ever matching), and 50 ms
  later the same plain request beside them: its seconds, and how the heavy ones were answered.

    python bench/stop_regex_step_bench.py [--heavy 16] [--patterns 4]

Writes bench/results/stop_regex_step_bench.jsonl, one row per server.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from _common import post_status, stock_then_mint
from sglang_mint.dev.server import SGLangServer

COMMON = ["--enable-lora", "--max-lora-rank", "8", "--lora-target-modules", "all"]
PLAIN = {"text": "hello", "sampling_params": {"max_new_tokens": 48, "ignore_eos": True}}
LETTERS = "bcdefghijklmnopqrstuvwxyzBCDEFGH"  # SGLang takes 32 patterns at most


def post(url: str, body: dict) -> tuple[int, float]:
    started = time.perf_counter()
    code = post_status(url, "/generate", body)
    return code, round(time.perf_counter() - started, 3)


def run(model: str, mint: bool, heavy: int, patterns: int) -> dict:
    from transformers import AutoTokenizer

    [token] = AutoTokenizer.from_pretrained(model).encode("a", add_special_tokens=False)
    costly = {"text": "hello", "sampling_params": {
        "max_new_tokens": 48, "temperature": 0, "logit_bias": {str(token): 100}, "ignore_eos": True,
        "stop_regex": [f"(a|aa){{1,10}}{letter}" for letter in LETTERS[:patterns]]}}
    with SGLangServer(model, enable_mint=mint, extra_args=COMMON, python=sys.executable) as server:
        alone = post(server.url, PLAIN)
        with ThreadPoolExecutor(heavy) as pool:
            answers = [pool.submit(post, server.url, costly) for _ in range(heavy)]
            time.sleep(0.05)
            beside = post(server.url, PLAIN)
            heavy_answers = [a.result() for a in answers]
    return {"server": "mint" if mint else "stock", "args": COMMON, "heavy": heavy, "patterns_each": patterns,
            "plain_alone_s": alone[1], "plain_beside_s": beside[1], "plain_beside_code": beside[0],
            "heavy_codes": dict(Counter(code for code, _ in heavy_answers)),
            "heavy_slowest_s": max(seconds for _, seconds in heavy_answers)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--heavy", type=int, default=16, help="requests with costly patterns at once (default 16)")
    ap.add_argument("--patterns", type=int, default=4, choices=range(1, 33), metavar="1..32",
                    help="stop patterns each (default 4)")
    ap.add_argument("--no-record", action="store_true", help="print only, append nothing to bench/results")
    args = ap.parse_args()
    stock_then_mint("stop_regex_step_bench", lambda model, mint: run(model, mint, args.heavy, args.patterns), {},
                    record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
