"""Does what a client's invented input leaves in the server stay bounded, against stock SGLang on the same requests?

Two servers in one run, one after the other, on the tiny random Llama, with --enable-metrics,
--enable-response-store and LoRA on: stock SGLang, then --enable-mint with small limits
(--mint-grammar-cache-bytes 4MiB, --mint-stored-responses-bytes 4MiB, --mint-max-sessions 256, and the default
--mint-session-history-tokens and --mint-max-stored-responses, 10,000). Each gets the same six sweeps, none
generating more than two tokens:

- grammars: rounds of 200 /generate requests with a new 256 KiB regex that does not parse (400):
  the scheduler's RSS growth after each round;
- stored conversations: rounds of 100 /v1/responses requests with a new 256 KiB input, too long for
  the model (400): the frontend's RSS growth after each round;
- stored answers: rounds of 100 /v1/responses requests answered (two tokens at most) whose function tool has a new
  256 KiB description, stored with the answer though the model never sees it: the frontend's RSS growth;
- one session's history: rounds of 300 /generate requests of 1,800 tokens in one session (the same
  prompt, so a prefix-cache hit): the scheduler's RSS growth after each round;
- metric series: 200 requests to invented paths and 50 with invented methods: the ``sglang:http_*``
  series on /metrics;
- sessions: 2,000 /open_session calls never closed: how many were opened.

    python bench/client_state_bench.py [--rounds 4]

Writes bench/results/client_state_bench.jsonl, one row per server.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
import uuid


from _common import post_status, stock_then_mint
from _server_memory import mib, processes
from sglang_mint.dev.server import SGLangServer

COMMON = ["--enable-lora", "--max-lora-rank", "8", "--lora-target-modules", "all", "--enable-metrics",
          "--enable-response-store"]
MINT_LIMITS = ["--mint-grammar-cache-bytes", "4MiB", "--mint-stored-responses-bytes", "4MiB",
               "--mint-max-sessions", "256"]
TEXT_BYTES = 256 << 10
SESSIONS = 2000
SESSION_PROMPT = [3 + (7 * i) % 500 for i in range(1800)]


def post(url: str, path: str, body: dict) -> int:
    return post_status(url, path, body, timeout=120)


def grammar_rounds(server, rounds: int) -> list[float]:
    sched = processes(server)["scheduler"]
    base, grown = sched.memory_info().rss, []
    for _ in range(rounds):
        for _ in range(200):
            regex = "(" + uuid.uuid4().hex + "x" * TEXT_BYTES
            assert post(server.url, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 1,
                                                                                      "regex": regex}}) == 400
        grown.append(mib(sched.memory_info().rss - base))
    return grown


def conversation_rounds(server, rounds: int) -> list[float]:
    frontend = processes(server)["frontend"]
    base, grown = frontend.memory_info().rss, []
    for _ in range(rounds):
        for _ in range(100):
            text = uuid.uuid4().hex + " word" * (TEXT_BYTES // 5)
            assert post(server.url, "/v1/responses", {"model": "tiny", "input": text, "max_output_tokens": 1}) == 400
        grown.append(mib(frontend.memory_info().rss - base))
    return grown


def answer_rounds(server, rounds: int) -> list[float]:
    frontend = processes(server)["frontend"]
    base, grown = frontend.memory_info().rss, []
    for _ in range(rounds):
        for _ in range(100):
            tool = {"type": "function", "name": "lookup", "description": uuid.uuid4().hex + "x" * TEXT_BYTES,
                    "parameters": {"type": "object", "properties": {}}}
            assert post(server.url, "/v1/responses", {"model": "tiny", "input": "hi", "max_output_tokens": 2,
                                                      "tools": [tool]}) == 200  # 1: stock SGLang's 400
        grown.append(mib(frontend.memory_info().rss - base))
    return grown


def session_history_rounds(server, rounds: int) -> list[float]:
    request = urllib.request.Request(server.url + "/open_session", data=b'{"capacity_of_str_len": 100000}',
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        session_id = json.loads(answer.read())
    sched = processes(server)["scheduler"]
    base, grown = sched.memory_info().rss, []
    for _ in range(rounds):
        for _ in range(300):
            assert post(server.url, "/generate", {"input_ids": SESSION_PROMPT, "session_params": {"id": session_id},
                                                  "sampling_params": {"max_new_tokens": 1}}) == 200
        grown.append(mib(sched.memory_info().rss - base))
    assert post(server.url, "/close_session", {"session_id": session_id}) == 200
    return grown


def metric_series(server) -> dict:
    def count() -> int:
        with urllib.request.urlopen(server.url + "/metrics", timeout=60) as answer:
            return sum(line.startswith("sglang:http_") for line in answer.read().decode().splitlines())

    before = count()
    for i in range(200):
        server.status_of("GET", f"/invented-{uuid.uuid4().hex}")
    for i in range(50):
        server.status_of(f"M{uuid.uuid4().hex[:8].upper()}", "/v1/models")
    return {"series_before": before, "series_after": count()}


def sessions_opened(server) -> dict:
    codes = [post(server.url, "/open_session", {"capacity_of_str_len": 100}) for _ in range(SESSIONS)]
    return {"asked": SESSIONS, "opened": codes.count(200), "refused_429": codes.count(429)}


def run(model: str, mint: bool, rounds: int) -> dict:
    extra = COMMON + (MINT_LIMITS if mint else [])
    with SGLangServer(model, enable_mint=mint, extra_args=extra, python=sys.executable) as server:
        started = time.perf_counter()
        row = {"server": "mint" if mint else "stock", "args": extra,
               "grammar_scheduler_growth_mib": grammar_rounds(server, rounds),
               "conversation_frontend_growth_mib": conversation_rounds(server, rounds + 2),
               "answer_frontend_growth_mib": answer_rounds(server, rounds),
               "session_history_scheduler_growth_mib": session_history_rounds(server, rounds),
               "metric_series": metric_series(server), "sessions": sessions_opened(server)}
        row["seconds"] = round(time.perf_counter() - started, 1)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=4, help="rounds of the grammar sweep (the stored one gets two more)")
    ap.add_argument("--no-record", action="store_true", help="print only, append nothing to bench/results")
    args = ap.parse_args()
    stock_then_mint("client_state_bench", lambda model, mint: run(model, mint, args.rounds),
                    {"text_bytes": TEXT_BYTES, "rounds": args.rounds}, record=not args.no_record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
