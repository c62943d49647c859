"""The usage ledger end to end: 1,000 mixed requests, and the ledger's counts equal their answers'.

Real SGLang on CPU (``shared_catalog_server``: --enable-mint, --enable-cache-report) and the
official openai client: completions and chat, whole and streamed (usage in the last chunk), the
bare id and ``tiny:<id>``, prompts that repeat (cached tokens), 16 at once over six adapters
published for this module, more than the server's four GPU slots. Requests a client abandons
mid-stream go to a seventh adapter, so their row can be checked alone: each is counted once, with
its prompt, and as cancelled (not an error) unless it ran to its end before SGLang saw the hang-up.
"""

from __future__ import annotations

import json
import random
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from sglang_mint.catalog import open_catalog
from sglang_mint.cli import main as mint
from sglang_mint.client import MintClient
from sglang_mint.usage.ledger import FIELDS
from mint_status import mint_status

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

ADAPTERS = [f"usage/a{i}" for i in range(6)]  # the server has 4 slots (dev/server.py LORA_FLAGS)
ABANDONED = "usage/abandoned"
N_REQUESTS = 1000
N_ABANDONED = 12
# Far more than a request makes before its hang-up is seen: at 200, 3 of 12 finished first on an
# idle machine. SGLang aborts a streamed request whose client left up to 2 s after the hang-up
# (TokenizerManager.create_abort_task), so one may still run to its end: at 1,500, 1 of 12 did,
# counted whole and not as an error. The tiny model's context is 2,048.
ABANDONED_TOKENS = 2000
PROMPTS = ["the quick brown fox", "a b c d e f g h i j k l", "hello there, how are you today my friend"]


@pytest.fixture(scope="module")
def server(tiny_adapters, shared_catalog, shared_catalog_server):
    with open_catalog(str(shared_catalog)) as cat:
        for adapter_id, folder in zip(ADAPTERS + [ABANDONED], list(tiny_adapters.values()) * 3):
            cat.publish(adapter_id, str(folder))
    return shared_catalog_server


def usage_of(server, **query) -> dict:
    url = server.url + "/mint/usage?" + "&".join(f"{k}={v}" for k, v in query.items())
    with urllib.request.urlopen(url, timeout=60) as r:
        return json.loads(r.read())


def one(client, job) -> tuple[str, dict]:
    """Send one job; the answer's usage as the ledger counts it."""
    kind, stream, model, prompt, max_tokens = job
    args = {"model": model, "max_tokens": max_tokens, "temperature": 0}
    if kind == "chat":
        make, args["messages"] = client.chat.completions.create, [{"role": "user", "content": prompt}]
    else:
        make, args["prompt"] = client.completions.create, prompt
    if stream:
        usage = [c.usage for c in make(stream=True, stream_options={"include_usage": True}, **args) if c.usage]
        [usage] = usage
    else:
        usage = make(**args).usage
    cached = usage.prompt_tokens_details.cached_tokens if usage.prompt_tokens_details else 0
    return model.removeprefix("tiny:"), {"requests": 1, "prompt_tokens": usage.prompt_tokens,
                                         "cached_tokens": cached or 0,
                                         "completion_tokens": usage.completion_tokens, "errors": 0, "cancelled": 0}


def abandon(server, prompt: str) -> None:
    """Stream a long completion and hang up after the first chunk."""
    body = {"model": ABANDONED, "prompt": prompt, "max_tokens": ABANDONED_TOKENS, "stream": True, "temperature": 0,
            "ignore_eos": True}
    with httpx.stream("POST", server.openai_url + "/completions", json=body, timeout=120) as r:
        for _ in r.iter_lines():
            break


def test_ledger_counts_equal_the_answers(server):
    before = {a: usage_of(server, adapter=a)["totals"] for a in ADAPTERS + [ABANDONED]}
    rng = random.Random(7)
    jobs = [(rng.choice(["text", "chat"]), rng.random() < 0.5,
             rng.choice(["", "tiny:"]) + rng.choice(ADAPTERS), rng.choice(PROMPTS), rng.randint(1, 4))
            for _ in range(N_REQUESTS - N_ABANDONED)]
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    with ThreadPoolExecutor(16) as pool:
        abandoned = [pool.submit(abandon, server, PROMPTS[i % 3]) for i in range(N_ABANDONED)]
        answers = list(pool.map(lambda job: one(client, job), jobs))
        for f in abandoned:
            f.result()
    expected = {a: dict.fromkeys(FIELDS, 0) for a in ADAPTERS}
    for adapter, counts in answers:
        for name in FIELDS:
            expected[adapter][name] += counts[name]
    assert sum(e["cached_tokens"] for e in expected.values()) > 0  # repeated prompts hit the prefix cache
    deadline = time.monotonic() + 30  # the ledger appends every 2 s
    while True:
        got = {a: {k: v - before[a][k] for k, v in usage_of(server, adapter=a)["totals"].items()}
               for a in ADAPTERS + [ABANDONED]}
        if all(got[a] == expected[a] for a in ADAPTERS) and got[ABANDONED]["requests"] == N_ABANDONED:
            break
        assert time.monotonic() < deadline, (got, expected)
        time.sleep(0.5)
    prompt_lengths = {p: one(client, ("text", False, ADAPTERS[0], p, 1))[1]["prompt_tokens"] for p in PROMPTS}
    # the next test reads the ledger three ways and compares them: let these three reach it first
    wanted = before[ADAPTERS[0]]["requests"] + expected[ADAPTERS[0]]["requests"] + len(PROMPTS)
    deadline = time.monotonic() + 30
    while usage_of(server, adapter=ADAPTERS[0])["totals"]["requests"] != wanted:
        assert time.monotonic() < deadline, usage_of(server, adapter=ADAPTERS[0])["totals"]
        time.sleep(0.5)
    lost = got[ABANDONED]
    assert lost["prompt_tokens"] == sum(prompt_lengths[PROMPTS[i % 3]] for i in range(N_ABANDONED))
    # Each abandoned request ended cancelled, with the tokens it made before its abort (at least the
    # one its client read), or ran to its end (all its tokens); a hang-up is not an error.
    aborted = lost["cancelled"]
    assert 0 < aborted <= N_ABANDONED and lost["errors"] == 0, lost
    aborted_tokens = lost["completion_tokens"] - (N_ABANDONED - aborted) * ABANDONED_TOKENS
    assert aborted <= aborted_tokens <= aborted * (ABANDONED_TOKENS - 1), lost


def test_usage_rows_per_minute_the_cli_and_bad_queries(server, capsys):
    rows = usage_of(server, adapter=ADAPTERS[0], since="2026-01-01T00:00Z")["usage"]
    assert rows and {r["adapter"] for r in rows} == {ADAPTERS[0]} and {r["revision"] for r in rows} == {1}
    assert all(r["minute"].endswith(":00Z") for r in rows)
    assert mint(["usage", "--dir", str(server.usage_dir), "--adapter", ADAPTERS[0], "--json"]) == 0
    [total] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert total == {"adapter": ADAPTERS[0], "revision": 1,
                     **{k: sum(r[k] for r in rows) for k in FIELDS}}
    assert mint(["usage", "--dir", str(server.usage_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["adapter", "revision", *FIELDS] and any(ADAPTERS[0] in line for line in table)
    by_adapter = MintClient(server.url).usage(adapter=ADAPTERS[0], since=0, by="adapter")
    assert by_adapter["usage"] == [total] and len(by_adapter["engines"]) == 1  # this engine's files only
    assert usage_of(server, adapter=ADAPTERS[0], until="2026-01-01")["usage"] == []
    for query, complaint in ((("since", "yesterday"), "since: 'yesterday' is not a moment"),
                             (("by", "hour"), "by: 'hour': expected minute or adapter"),
                             (("adapterz", "x"), "unknown query parameter 'adapterz'")):
        with pytest.raises(urllib.error.HTTPError) as err:
            usage_of(server, **dict([query]))
        assert err.value.code == 400 and complaint in json.loads(err.value.read())["error"]["message"]


def test_a_request_with_n_choices_counts_each_choice_and_its_prompt_once(server):
    """SGLang serves n > 1 as a warm-up of the prompt (no new token: it caches the prefix), then one
    request per choice. Each was counted whole: n = 3 gave 4 requests and 4 prompts, 3 of them cached
    only because of that warm-up. The ledger counts one request per choice and the prompt once, with
    what it found cached before; the answer's usage counts the prompt once too."""
    adapter = ADAPTERS[5]
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    before = usage_of(server, adapter=adapter)["totals"]
    prompt = "one prompt this module sends only here, for three choices"  # nothing of it cached before
    answer = client.completions.create(model=adapter, prompt=prompt, n=3, max_tokens=5, temperature=1.0)
    assert len(answer.choices) == 3
    expected = {"requests": 3, "prompt_tokens": answer.usage.prompt_tokens, "cached_tokens": 0,
                "completion_tokens": answer.usage.completion_tokens, "errors": 0, "cancelled": 0}
    deadline = time.monotonic() + 30  # the ledger appends every 2 s
    while True:
        got = {k: v - before[k] for k, v in usage_of(server, adapter=adapter)["totals"].items()}
        if got["requests"] >= 3:
            time.sleep(2.5)  # and one more append: a fourth request counted would show
            got = {k: v - before[k] for k, v in usage_of(server, adapter=adapter)["totals"].items()}
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    assert got == expected


def test_the_servers_own_warm_ups_are_not_billed(server, tiny_adapters):
    """A publish or rollback over HTTP, and ``/mint/prefetch``, load the revision with a one-token
    request of the server's own (``CatalogFrontend.warm``). Each was billed to the adapter as a
    tenant's request: this sequence showed 5 requests for the client's one."""
    adapter, (first, second, _) = "usage/warmed", tiny_adapters.values()
    admin = MintClient(server.url)
    [scheduler] = mint_status(server)["schedulers"]
    admin.publish(adapter, first)  # warm: the server's default for a durable publish
    deadline = time.monotonic() + 30
    while mint_status(server)["schedulers"][0]["requests"] == scheduler["requests"]:  # the warm-up reached it
        assert time.monotonic() < deadline, "the publish's warm-up never reached the scheduler"
        time.sleep(0.2)
    admin.publish(adapter, second)
    admin.rollback(adapter)
    prefetch = urllib.request.Request(server.url + "/mint/prefetch", data=json.dumps({"adapters": [adapter]}).encode(),
                                      headers={"content-type": "application/json"})
    with urllib.request.urlopen(prefetch, timeout=60) as r:
        assert json.loads(r.read())["prefetching"] == [f"{adapter}@1"]
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    answer = client.completions.create(model=adapter, prompt="the client's one request", max_tokens=3, temperature=0)
    cached = answer.usage.prompt_tokens_details.cached_tokens if answer.usage.prompt_tokens_details else 0
    expected = {"requests": 1, "prompt_tokens": answer.usage.prompt_tokens, "cached_tokens": cached or 0,
                "completion_tokens": answer.usage.completion_tokens, "errors": 0, "cancelled": 0}
    deadline = time.monotonic() + 30  # the ledger appends every 2 s; the warm-ups ran beside the request
    while usage_of(server, adapter=adapter)["totals"]["requests"] < 1:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(2.5)  # one more append: a warm-up counted would show
    got = usage_of(server, adapter=adapter)["totals"]
    assert {k: got[k] for k in expected} == expected


def test_sglang_s_health_checks_are_not_billed(server):
    """/health_generate (and /health, which SMG calls every second) runs a one-token request on the base
    model; the ledger billed each to it, as a tenant's request."""
    def base_requests() -> int:
        return sum(row["requests"] for row in usage_of(server, since="2026-01-01T00:00Z")["usage"]
                   if row["adapter"] is None)

    before = base_requests()
    for _ in range(3):
        with urllib.request.urlopen(server.url + "/health_generate", timeout=60) as r:
            assert r.status == 200
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    client.completions.create(model="tiny", prompt="a base model request", max_tokens=2, temperature=0)
    deadline = time.monotonic() + 30  # the ledger appends every 2 s
    while base_requests() == before:
        assert time.monotonic() < deadline
        time.sleep(0.5)
    time.sleep(2.5)  # one more append: a health check counted would show
    assert base_requests() == before + 1  # the client's request alone


def test_a_request_the_scheduler_refuses_on_arrival_counts_as_an_error(server, shared_catalog, tiny_adapters):
    """SGLang's scheduler refuses some requests before it queues them (a sampling mask without a top_k it can
    mask, a beam or a disaggregated request it cannot serve): their answer is a 400, and the ledger never
    saw them. Each counts as one request and one error, with no tokens."""
    adapter = "usage/refused"
    with open_catalog(str(shared_catalog)) as cat:
        cat.publish(adapter, str(next(iter(tiny_adapters.values()))))
    before = usage_of(server, adapter=adapter)["totals"]
    body = {"text": "the scheduler refuses this", "lora_path": adapter, "return_sampling_mask": True,
            "sampling_params": {"max_new_tokens": 4, "top_k": -1}}
    for _ in range(2):
        answer = httpx.post(server.url + "/generate", json=body, timeout=120)
        assert answer.status_code == 400 and "return_sampling_mask requires top_k" in answer.text, answer.text
    served = httpx.post(server.url + "/generate", json={**body, "return_sampling_mask": False}, timeout=120)
    assert served.status_code == 200, served.text  # the same request without the mask is served
    expected = {"requests": 3, "errors": 2, "cancelled": 0,
                "completion_tokens": served.json()["meta_info"]["completion_tokens"]}
    deadline = time.monotonic() + 30  # the ledger appends every 2 s
    while True:
        got = {k: v - before[k] for k, v in usage_of(server, adapter=adapter)["totals"].items()}
        if got["requests"] >= 3:
            break
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    assert {k: got[k] for k in expected} == expected
    assert got["prompt_tokens"] == served.json()["meta_info"]["prompt_tokens"]  # the refusals billed none
