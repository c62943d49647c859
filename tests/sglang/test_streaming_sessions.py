"""Streaming sessions within --mint-max-streaming-sessions (sglang/session_bounds.py), end to end.

A streaming session holds one of the scheduler's request slots (as many as --max-running-requests) from its
first request until it is closed. On a server with two slots, two streaming sessions with one request each
left the scheduler no room for any other request: SGLang 0.5.23 with --enable-mint before this limit answered
no request until a session was closed or timed out (600 s by default). Here the server has two slots, so it
keeps at most one streaming session open.
"""

from __future__ import annotations

import json
import sys
import urllib.request

import pytest
from json_calls import post_json

from sglang_mint.dev.server import SGLangServer

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast


@pytest.fixture(scope="module")
def two_slot_server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("two-slot-server") / "server.log"
    with SGLangServer(tiny_model, enable_mint=True, log_path=log, python=sys.executable,
                      extra_args=["--enable-streaming-session", "--max-running-requests", "2"]) as server:
        yield server


def open_session(server, **body) -> tuple[int, str]:
    return post_json(server, "/open_session", {"capacity_of_str_len": 1000, **body})


def turn(server, session_id: str) -> tuple[int, str]:
    return post_json(server, "/generate", {"text": "hello there " * 20, "session_params": {"id": session_id},
                                           "sampling_params": {"max_new_tokens": 2}})


def sessions(server) -> dict:
    with urllib.request.urlopen(server.url + "/server_info", timeout=60) as r:
        return json.loads(r.read())["internal_states"][0]["mint_sessions"]


def test_streaming_sessions_leave_a_request_slot_to_everyone_else(two_slot_server):
    server = two_slot_server
    assert sessions(server)["max_streaming_open"] == 1  # a quarter of two slots, at least one, never both
    code, first = open_session(server, streaming=True)
    assert code == 200, first
    first = json.loads(first)
    code, text = turn(server, first)
    assert code == 200, text  # the session now holds a slot

    code, text = open_session(server, streaming=True)
    assert code == 429 and "--mint-max-streaming-sessions" in text, (code, text)
    code, plain = open_session(server)  # a non-streaming session holds no slot
    assert code == 200, plain
    code, text = turn(server, json.loads(plain))
    assert code == 200, text
    code, text = post_json(server, "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 2}})
    assert code == 200, text  # the other slot serves everyone else
    assert sessions(server) | {"max_open": None} == {"open": 2, "max_open": None, "streaming_open": 1,
                                                     "max_streaming_open": 1, "refused": 1}

    assert post_json(server, "/close_session", {"session_id": first})[0] == 200
    code, second = open_session(server, streaming=True)
    assert code == 200, second  # room again
    code, text = turn(server, json.loads(second))
    assert code == 200, text
