"""Streaming sessions within --mint-max-streaming-sessions and half the KV cache (sglang/session_bounds.py),
end to end.

A streaming session holds one of the scheduler's request slots (as many as --max-running-requests) and the KV
cache of every turn's tokens from its first request until it is closed. With SGLang 0.5.23 and --enable-mint
before these limits, on a server with two slots two streaming sessions of one request each left no room for
any other request, and on one with 4096 tokens of KV cache four sessions of 1,000 tokens did the same: the
server answered nothing more until a session was closed or timed out (600 s by default). Here the server has
eight slots and 4096 tokens: at most two streaming sessions, holding at most 2048 tokens together.
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
def small_server(tiny_model, tmp_path_factory):
    log = tmp_path_factory.mktemp("small-server") / "server.log"
    with SGLangServer(tiny_model, enable_mint=True, log_path=log, python=sys.executable,
                      extra_args=["--enable-streaming-session", "--max-running-requests", "8",
                                  "--max-total-tokens", "4096"]) as server:
        yield server


class Sessions:
    """Sessions opened on ``server``, all closed on leaving."""

    def __init__(self, server):
        self.server, self.opened = server, []

    def __enter__(self) -> "Sessions":
        return self

    def __exit__(self, *exc) -> None:
        for session_id in self.opened:
            post_json(self.server, "/close_session", {"session_id": session_id})

    def open(self, **body) -> tuple[int, str]:
        code, text = post_json(self.server, "/open_session", {"capacity_of_str_len": 100_000, **body})
        if code == 200:
            self.opened.append(json.loads(text))
            return code, self.opened[-1]
        return code, text

    def turn(self, session_id: str, text: str) -> tuple[int, str]:
        return post_json(self.server, "/generate", {"text": text, "session_params": {"id": session_id},
                                                    "sampling_params": {"max_new_tokens": 2}})

    def close(self, session_id: str) -> None:
        assert post_json(self.server, "/close_session", {"session_id": session_id})[0] == 200
        self.opened.remove(session_id)


def serves(server, text: str = "hi") -> bool:
    return post_json(server, "/generate", {"text": text, "sampling_params": {"max_new_tokens": 2}})[0] == 200


def mint_sessions(server) -> dict:
    with urllib.request.urlopen(server.url + "/server_info", timeout=60) as r:
        return json.loads(r.read())["internal_states"][0]["mint_sessions"]


def test_streaming_sessions_leave_request_slots_to_everyone_else(small_server):
    with Sessions(small_server) as sessions:
        streaming = []
        for n in range(2):  # a quarter of eight slots
            code, session_id = sessions.open(streaming=True)
            assert code == 200, session_id
            assert sessions.turn(session_id, f"{n} hello")[0] == 200  # the session now holds a slot
            streaming.append(session_id)
        code, text = sessions.open(streaming=True)
        assert code == 429 and "--mint-max-streaming-sessions" in text, (code, text)
        code, plain = sessions.open()  # a non-streaming session holds no slot
        assert code == 200 and sessions.turn(plain, "hello")[0] == 200, plain
        assert serves(small_server)
        state = mint_sessions(small_server)
        assert (state["open"], state["streaming_open"], state["max_streaming_open"]) == (3, 2, 2), state
        assert state["refused"] >= 1 and state["streaming_turns_refused"] == 0, state

        sessions.close(streaming[0])
        code, third = sessions.open(streaming=True)
        assert code == 200, third  # room again
        assert sessions.turn(third, "2 hello")[0] == 200


def test_streaming_sessions_hold_at_most_half_the_kv_cache(small_server):
    long_turn = "hello there " * 175  # about 700 tokens
    with Sessions(small_server) as sessions:
        (_, first), (_, second) = sessions.open(streaming=True), sessions.open(streaming=True)
        assert sessions.turn(first, f"0 {long_turn}")[0] == 200
        code, text = sessions.turn(second, f"1 {long_turn * 2}")  # a first turn: 700 + 1,400 tokens together
        assert code == 429 and "hold at most 2048 tokens of KV cache together" in text, (code, text)
        code, text = sessions.turn(second, f"1 {long_turn}")  # a distinct prefix each
        assert code == 200, text  # the refused session goes on
        state = mint_sessions(small_server)
        assert state["max_streaming_kv_tokens"] == 2048 and 1400 < state["streaming_kv_tokens"] <= 2048, state
        assert state["streaming_turns_refused"] == 1, state

        code, text = sessions.turn(first, long_turn)  # its KV would grow to some 1,400 tokens: 2,100 together
        assert code == 429 and "hold at most 2048 tokens of KV cache together" in text, (code, text)
        assert serves(small_server, long_turn[:1000])  # the other half serves everyone else
        sessions.close(second)
        code, text = sessions.turn(first, long_turn)
        assert code == 200, text  # the refused session goes on as it was
        assert serves(small_server)
