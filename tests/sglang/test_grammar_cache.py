"""A scheduler keeps the grammars requests name within --mint-grammar-cache-bytes (grammar_cache.py), end to end.

SGLang alone keeps every compiled grammar, a failed one too, under the request's own text of it: 200 requests
with a 256 KiB regex that does not parse (400, no token generated) grew its scheduler by 105.5 MiB,
and by as much again with each 200 more (measured on this machine's tiny model, stock SGLang).
"""

from __future__ import annotations

import json
import re
import urllib.request
import uuid

import pytest
from json_calls import post_json
from process_memory import scheduler_rss

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

BUDGET = 4 << 20  # the server's --mint-grammar-cache-bytes


def grammar_cache(server) -> dict:
    with urllib.request.urlopen(server.url + "/server_info", timeout=60) as r:
        return json.loads(r.read())["internal_states"][0]["mint_grammar_cache"]


def generate(server, regex: str) -> tuple[int, str]:
    return post_json(server, "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 8,
                                                                                "regex": regex}})


def test_grammars_a_client_invents_stay_within_the_budget(small_budget_server):
    server = small_budget_server
    status, body = generate(server, "(ab|cd){2}")
    assert status == 200 and re.fullmatch("(ab|cd){2}", json.loads(body)["text"]), body
    rss_before = scheduler_rss(server)
    for _ in range(200):  # each a new 256 KiB text that fails to compile: about 50 MiB of keys in all
        status, body = generate(server, "(" + uuid.uuid4().hex + "x" * (256 << 10))
        assert status == 400 and "Failed to compile regex" in body, body[:300]
    cache = grammar_cache(server)
    assert cache["budget_bytes"] == BUDGET and 0 < cache["bytes"] <= BUDGET, cache
    assert cache["evictions"] >= 200 - BUDGET // (256 << 10), cache
    grown = scheduler_rss(server) - rss_before
    assert grown < 40 << 20, f"the scheduler grew {grown >> 20} MiB (stock SGLang: over 100 MiB here)"
    # a grammar dropped from the cache compiles again when asked for
    status, body = generate(server, "(ab|cd){2}")
    assert status == 200 and re.fullmatch("(ab|cd){2}", json.loads(body)["text"]), body
