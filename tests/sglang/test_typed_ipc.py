"""Under msgpack IPC (SGLANG_USE_PICKLE_IPC=0) a catalog adapter is served, and a body the scheduler could not
decode is a 400, and the server keeps serving (sglang/typed_ipc.py).

``/generate`` takes a list for these fields (one value per prompt of a batch); on one prompt the list reached
the scheduler, whose typed decode raised in its loop: with --enable-mint before the check, the first body here
stopped the server, and every request after it was refused a connection.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request

import httpx
import openai
import pytest
from hung import HUNG_AFTER_S

from sglang_mint.catalog import init_catalog
from sglang_mint.dev.server import SGLangServer

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PLAIN = {"text": "the quick brown fox", "sampling_params": {"max_new_tokens": 2, "top_k": 1}}
# (field, the list on one prompt, the same value alone, what the field needs beside it)
LISTS = [
    ("return_sampling_mask", [True], True, {}),
    ("sampling_logprobs_mode", ["support"], "support", {"return_sampling_mask": True}),
    ("bootstrap_room", [7], 7, {}),
    ("bootstrap_host", ["127.0.0.1"], "127.0.0.1", {}),
]


ADAPTER = "msgpack/bot"
BILLED = "msgpack/billed"  # this one's requests come from one test only: its ledger rows are that test's


@pytest.fixture(scope="module")
def msgpack_server(tiny_model, tiny_adapters, tmp_path_factory):
    """A catalog of one adapter, served with msgpack between the server's processes."""
    root = tmp_path_factory.mktemp("msgpack-catalog") / "catalog"
    with init_catalog(str(root), str(tiny_model)) as catalog:
        catalog.publish(ADAPTER, str(next(iter(tiny_adapters.values()))))
        catalog.publish(BILLED, str(next(iter(tiny_adapters.values()))))
    log = tmp_path_factory.mktemp("msgpack-server") / "server.log"
    with SGLangServer(tiny_model, enable_mint=True, log_path=log, python=sys.executable,
                      extra_args=["--mint-catalog", str(root)], env={"SGLANG_USE_PICKLE_IPC": "0"}) as server:
        yield server


def generate(server, body: dict) -> httpx.Response:
    return httpx.post(server.url + "/generate", json=body, timeout=120)


@pytest.mark.parametrize("field, listed, alone, beside", LISTS, ids=[case[0] for case in LISTS])
def test_a_list_where_the_scheduler_reads_one_value_is_refused(msgpack_server, field, listed, alone, beside):
    refused = generate(msgpack_server, {**PLAIN, **beside, field: listed})
    assert refused.status_code == 400, refused.text
    assert f"{field}: the scheduler cannot read it for one prompt" in refused.json()["error"]["message"]
    assert generate(msgpack_server, PLAIN).status_code == 200  # the server is still up
    served = generate(msgpack_server, {**PLAIN, **beside, field: alone})
    assert served.status_code == 200, served.text  # the value alone is no problem
    assert msgpack_server.proc.poll() is None


def test_a_batch_takes_one_value_per_prompt(msgpack_server):
    batch = generate(msgpack_server, {**PLAIN, "text": [PLAIN["text"], "hello"], "return_sampling_mask": [True, False]})
    assert batch.status_code == 200, batch.text
    assert len(batch.json()) == 2


def test_a_catalog_adapter_is_served(msgpack_server):
    """The request's adapter name went to the scheduler as the frontend's RevisionName, a str subclass msgpack does
    not encode: every request naming a catalog adapter failed, 500."""
    body = {**PLAIN, "sampling_params": {"max_new_tokens": 8, "temperature": 0}}
    adapted = generate(msgpack_server, {**body, "lora_path": ADAPTER})
    assert adapted.status_code == 200, adapted.text
    base = generate(msgpack_server, body)
    assert base.status_code == 200 and adapted.json()["output_ids"] != base.json()["output_ids"]  # the adapter ran


def test_the_openai_route_serves_and_bills_the_adapter(msgpack_server):
    before = usage_totals(msgpack_server)
    client = openai.OpenAI(base_url=msgpack_server.openai_url, api_key="none", max_retries=0, timeout=120)
    chunks = list(client.chat.completions.create(model=BILLED, messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=3, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    [usage] = [c.usage for c in chunks if c.usage]
    deadline = time.monotonic() + HUNG_AFTER_S  # the ledger appends every 2 s
    while (got := {k: v - before[k] for k, v in usage_totals(msgpack_server).items()})["requests"] < 1:
        assert time.monotonic() < deadline, got
        time.sleep(0.5)
    assert got["requests"] == 1 and got["completion_tokens"] == usage.completion_tokens > 0, got
    assert got["prompt_tokens"] == usage.prompt_tokens and got["errors"] == 0, got


def usage_totals(server) -> dict:
    with urllib.request.urlopen(f"{server.url}/mint/usage?adapter={BILLED}", timeout=60) as r:
        return json.loads(r.read())["totals"]
