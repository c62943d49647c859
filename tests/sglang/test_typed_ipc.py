"""Under msgpack IPC (SGLANG_USE_PICKLE_IPC=0) a body the scheduler could not decode is a 400, and the server
keeps serving (sglang/typed_ipc.py).

``/generate`` takes a list for these fields (one value per prompt of a batch); on one prompt the list reached
the scheduler, whose typed decode raised in its loop: with --enable-mint before the check, the first body here
stopped the server, and every request after it was refused a connection.
"""

from __future__ import annotations

import sys

import httpx
import pytest

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


@pytest.fixture(scope="module")
def msgpack_server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("msgpack-server") / "server.log"
    with SGLangServer(tiny_model, enable_mint=True, log_path=log, python=sys.executable,
                      env={"SGLANG_USE_PICKLE_IPC": "0"}) as server:
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
