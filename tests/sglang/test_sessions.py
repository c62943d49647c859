"""SGLang's sessions within --mint-max-sessions and --mint-session-timeout (sglang/session_bounds.py), end to end.

SGLang opens a session for any caller and keeps it until its client closes it (or, with a ``timeout`` in the
body, until it has been idle that long): sessions opened and never closed piled up in the scheduler for good.
The shared ``mint_server`` keeps at most three open, each closed after 4 s idle.
"""

from __future__ import annotations

import json
import time

import pytest
from json_calls import post_json

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

MAX_SESSIONS, TIMEOUT_S = 3, 4


def open_session(server, **body) -> tuple[int, str]:
    return post_json(server, "/open_session", {"capacity_of_str_len": 1000, **body})


def test_sessions_past_the_limit_are_refused_until_one_closes_or_idles_out(mint_server):
    opened = []
    for _ in range(MAX_SESSIONS):  # none asks for a timeout: each gets the server's
        code, text = open_session(mint_server)
        assert code == 200, text
        opened.append(json.loads(text))
    code, text = open_session(mint_server)
    assert code == 429 and "--mint-max-sessions" in text and f"at most {MAX_SESSIONS}" in text, (code, text)

    assert post_json(mint_server, "/close_session", {"session_id": opened.pop()})[0] == 200
    code, text = open_session(mint_server)
    assert code == 200, text  # room again
    opened.append(json.loads(text))
    turn = {"text": "hello", "session_params": {"id": opened[-1]}, "sampling_params": {"max_new_tokens": 2}}
    code, text = post_json(mint_server, "/generate", turn)
    assert code == 200 and json.loads(text)["meta_info"]["finish_reason"]["type"] == "length", text  # it serves

    time.sleep(TIMEOUT_S + 1.5)  # every open session idles out: none was closed by its client
    for _ in range(MAX_SESSIONS):
        code, text = open_session(mint_server, timeout=2)
        assert code == 200, text
    code, text = post_json(mint_server, "/generate", turn)  # the session that idled out is gone
    assert code != 200 or json.loads(text)["meta_info"]["finish_reason"]["type"] == "abort", text
    time.sleep(2 + 1.5)  # the three just opened, with 2 s of their own


@pytest.mark.parametrize("timeout", [TIMEOUT_S + 1, 1e9, 0, -1])
def test_a_session_may_not_ask_to_be_kept_idle_longer_than_the_server_allows(mint_server, timeout):
    code, text = open_session(mint_server, timeout=timeout)
    assert code == 400 and "--mint-session-timeout" in text and f"at most {TIMEOUT_S} s" in text, (code, text)
