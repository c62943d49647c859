"""A session's history (sglang/session_history.py) and the session_params a request writes, end to end.

Each body refused here stopped a stock SGLang 0.5.23 server (and one with --enable-mint before this
check): the scheduler raised on it and took every process down. The shared ``mint_server`` keeps at most
three sessions open, each closed after 4 s idle, and 2048 tokens of a session's requests.
"""

from __future__ import annotations

import json
import urllib.request

import pytest
from json_calls import post_json
from process_memory import scheduler_rss

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

HISTORY_TOKENS = 2048  # the server's --mint-session-history-tokens
KEPT_REQUEST_OVERHEAD_TOKENS = 256  # frontend/session_bounds.py


class Session:
    """A session on ``server``, closed on leaving (the server keeps three open)."""

    def __init__(self, server):
        self.server = server

    def __enter__(self) -> "Session":
        code, text = post_json(self.server, "/open_session", {"capacity_of_str_len": 100_000})
        assert code == 200, text
        self.id = json.loads(text)
        return self

    def __exit__(self, *exc) -> None:
        post_json(self.server, "/close_session", {"session_id": self.id})

    def generate(self, name: str | None = None, prompt="hello", **params) -> tuple[int, dict | str]:
        """A request of rid ``name`` in this session, ``params`` its other session_params."""
        body = {("input_ids" if isinstance(prompt, list) else "text"): prompt,
                "session_params": {"id": self.id, **params}, "sampling_params": {"max_new_tokens": 2}}
        if name is not None:
            body["rid"] = name
        code, text = post_json(self.server, "/generate", body)
        return code, (json.loads(text) if code == 200 else text)


def serves(server) -> bool:
    code, text = post_json(server, "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 1}})
    return code == 200


def session_history(server) -> dict:
    with urllib.request.urlopen(server.url + "/server_info", timeout=60) as r:
        return json.loads(r.read())["internal_states"][0]["mint_session_history"]


@pytest.mark.parametrize("params, field", [
    ({"rid": ["turn-a"]}, "rid"),
    ({"rid": "turn-a", "offset": "2"}, "offset"),
    ({"rid": "turn-a", "offset": 2**63}, "offset"),
    ({"rid": "turn-a", "replace": "yes"}, "replace"),
    ({"drop_previous_output": 1}, "drop_previous_output"),
    ({"branch": "turn-a"}, "branch"),
])
def test_session_params_the_scheduler_cannot_read_are_refused(mint_server, params, field):
    with Session(mint_server) as session:
        code, answer = session.generate("turn-a")
        assert code == 200, answer
        code, text = session.generate(**params)
        assert code == 400 and f"session_params.{field}" in text, (code, text)
        assert serves(mint_server)
        code, answer = session.generate("turn-b", rid="turn-a")
        assert code == 200, answer  # the session itself still serves


def test_a_session_id_of_the_wrong_type_is_refused(mint_server):
    code, text = post_json(mint_server, "/generate", {"text": "hello", "session_params": {"id": ["s"]}})
    assert code == 400 and "session_params.id: a string (or null)" in text, (code, text)
    assert serves(mint_server)


def test_replacing_a_whole_history_keeps_the_server_serving(mint_server):
    with Session(mint_server) as session:
        assert session.generate("turn-a")[0] == 200
        assert session.generate("turn-b", rid="turn-a")[0] == 200
        code, answer = session.generate("turn-c", replace=True)  # SGLang deleted while iterating: stopped
        assert code == 200 and answer["meta_info"]["finish_reason"]["type"] == "length", answer
        code, text = session.generate(rid="turn-a")
        assert code == 400 and "turn-a" in text, (code, text)  # replaced: gone
        assert session.generate(rid="turn-c")[0] == 200
    assert serves(mint_server)


def test_a_rid_sent_again_in_its_session_and_then_replaced(mint_server):
    with Session(mint_server) as session:
        assert session.generate("turn-a")[0] == 200
        assert session.generate("turn-b", rid="turn-a")[0] == 200
        assert session.generate("turn-b", rid="turn-a")[0] == 200  # the same rid, once the first is done
        code, answer = session.generate("turn-c", rid="turn-a", replace=True)  # SGLang deleted turn-b twice
        assert code == 200, answer
        code, text = session.generate(rid="turn-b")
        assert code == 400 and "turn-b" in text, (code, text)
        assert session.generate(rid="turn-c")[0] == 200
    assert serves(mint_server)


def test_a_session_keeps_its_history_within_the_budget(mint_server):
    prompt = [3 + (7 * i) % 500 for i in range(400)]  # 400 tokens: three requests fit the budget, four do not
    with Session(mint_server) as session:
        for turn in range(12):
            code, answer = session.generate(f"turn-{turn}", prompt)
            assert code == 200, answer
        history = session_history(mint_server)
        assert history["tokens_per_session"] == HISTORY_TOKENS, history
        assert history["requests_kept"] == HISTORY_TOKENS // (400 + 2 + KEPT_REQUEST_OVERHEAD_TOKENS), history
        assert history["tokens_kept"] <= HISTORY_TOKENS and history["requests_forgotten"] >= 12 - 3, history
        code, text = session.generate(rid="turn-0")  # forgotten: the least recently used
        assert code == 400 and "--mint-session-history-tokens" in text and "'turn-0'" in text, (code, text)
        assert session.generate("turn-12", rid="turn-11")[0] == 200  # the newest continues
        assert session.generate("turn-13", prompt, rid="turn-10")[0] == 200  # so does a kept older one


def test_a_busy_session_does_not_grow_the_scheduler(mint_server):
    prompt = [3 + (7 * i) % 500 for i in range(1800)]
    with Session(mint_server) as session:
        for turn in range(60):
            assert session.generate(f"warm-{turn}", prompt)[0] == 200
        rss_before = scheduler_rss(mint_server)
        for turn in range(300):  # --enable-mint before the bound kept all: 13.1 MiB more per 500 here
            assert session.generate(f"turn-{turn}", prompt)[0] == 200
        grown = scheduler_rss(mint_server) - rss_before
    assert grown < 4 << 20, f"the scheduler grew {grown / 2**20:.1f} MiB over 300 requests of one session"


def test_a_refused_replace_keeps_the_history(mint_server):
    with Session(mint_server) as session:
        assert session.generate("turn-a")[0] == 200
        code, text = session.generate("turn-b", [], replace=True)  # no tokens once the history is gone: refused
        assert code == 400, (code, text)
        assert session.generate("turn-c", rid="turn-a")[0] == 200  # turn-a is still there
