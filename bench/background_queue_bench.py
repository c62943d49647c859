"""Does a client's flood of background /v1/responses requests still queue ahead of everyone, against stock SGLang?

A background request holds no connection while it waits, so one client can queue as many as it likes. Two
servers in one run, one after the other, on the tiny random Llama with --enable-response-store and LoRA on:
stock SGLang, then --enable-mint with its default --mint-max-background-responses (256). Each gets:

- a plain /v1/responses request alone (8 tokens): its seconds;
- ``--flood`` background requests (200 tokens of input, 64 of output), 16 at a time: the seconds to post them,
  how many were taken (200) and refused (429), and the frontend's and scheduler's RSS growth;
- the same plain request right after: its seconds, waiting behind whatever was taken.

    python bench/background_queue_bench.py [--flood 2000]

Writes bench/results/background_queue_bench.jsonl, one row per server.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

from _common import post_status, stock_then_mint
from _server_memory import mib, processes
from sglang_mint.dev.server import SGLangServer

COMMON = ["--enable-lora", "--max-lora-rank", "8", "--lora-target-modules", "all", "--enable-response-store",
          "--served-model-name", "tiny"]
BACKGROUND = {"model": "tiny", "input": "hello " * 200, "max_output_tokens": 64, "background": True}
PLAIN = {"model": "tiny", "input": "hi", "max_output_tokens": 8}


def post(url: str, body: dict) -> int:
    return post_status(url, "/v1/responses", body)


def timed_plain(url: str) -> float:
    started = time.perf_counter()
    assert post(url, PLAIN) == 200
    return round(time.perf_counter() - started, 3)


def run(model: str, mint: bool, flood: int) -> dict:
    with SGLangServer(model, enable_mint=mint, extra_args=COMMON, python=sys.executable) as server:
        procs = processes(server)
        alone = timed_plain(server.url)
        before = {name: p.memory_info().rss for name, p in procs.items()}
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            codes = Counter(pool.map(lambda _: post(server.url, BACKGROUND), range(flood)))
        posted_s = round(time.perf_counter() - started, 1)
        grown = {f"{name}_growth_mib": mib(p.memory_info().rss - before[name]) for name, p in procs.items()}
        beside = timed_plain(server.url)
    return {"server": "mint" if mint else "stock", "args": COMMON, "plain_alone_s": alone, "flood": flood,
            "posted_s": posted_s, "taken_200": codes.pop(200, 0), "refused_429": codes.pop(429, 0),
            "other_codes": dict(codes), **grown, "plain_after_flood_s": beside}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=2000, help="background requests posted (default 2000)")
    ap.add_argument("--no-record", action="store_true", help="print only, append nothing to bench/results")
    args = ap.parse_args()
    stock_then_mint("background_queue_bench", lambda model, mint: run(model, mint, args.flood), {},
                    record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
