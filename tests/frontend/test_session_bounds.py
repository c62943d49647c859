"""The idle timeout a new SGLang session gets, and the refusal past the limit (frontend/session_bounds.py).
A real server: tests/sglang/test_sessions.py."""

from __future__ import annotations

import math

import pytest

from sglang_mint.frontend.session_bounds import (SessionsFull, check_session_params, history_to_forget, session_timeout,
                                                  sessions_full, streaming_kv_budget, streaming_session_limit,
                                                  streaming_turn_refusal, streaming_turn_tokens, unknown_session_rid)


def test_a_session_without_a_timeout_gets_the_server_s_and_one_within_it_keeps_its_own():
    assert session_timeout(None, 600.0) == 600.0
    assert session_timeout(30, 600.0) == 30.0 and session_timeout(600.0, 600.0) == 600.0


@pytest.mark.parametrize("asked", [601, 0, -5, math.inf, math.nan, True, "60"])
def test_a_timeout_above_the_limit_or_not_a_positive_number_is_refused(asked):
    with pytest.raises(ValueError, match=r"at most 600 s on this server \(--mint-session-timeout\)"):
        session_timeout(asked, 600.0)


def test_the_refusal_past_the_limit_is_a_429_naming_the_flag():
    full = sessions_full(1024, 600.0)
    assert isinstance(full, SessionsFull) and full.status_code == 429
    assert "at most 1024 sessions" in str(full) and "--mint-max-sessions" in str(full) and "600 s" in str(full)


@pytest.mark.parametrize("params, message", [
    ([{"id": "s"}], "session_params: an object"),
    ({"id": ["s"]}, r"session_params.id: a string \(or null\), got an array"),
    ({"id": "s", "rid": 7}, r"session_params.rid: a string \(or null\), got an integer"),
    ({"id": "s", "offset": "2"}, r"session_params.offset: an integer \(or null\), got a string"),
    ({"id": "s", "offset": True}, r"session_params.offset: an integer \(or null\), got a boolean"),
    ({"id": "s", "offset": -(2**31)}, r"session_params.offset: a token position, at most 2147483647"),
    ({"id": "s", "replace": "yes"}, r"session_params.replace: true or false \(or null\), got a string"),
    ({"id": "s", "drop_previous_output": 1}, r"session_params.drop_previous_output: true or false"),
    ({"id": "s", "branch": "a"}, r"session_params.branch: no such field; the fields are id, rid, offset"),
])
def test_session_params_the_scheduler_cannot_read_are_refused_naming_the_field(params, message):
    with pytest.raises(ValueError, match=message):
        check_session_params(params)


@pytest.mark.parametrize("params", [
    None, {}, {"id": "s"}, {"id": "s", "rid": "turn-1", "offset": -3, "replace": True, "drop_previous_output": False},
    {"id": "s", "rid": None, "offset": 2**31 - 1, "replace": None},
])
def test_session_params_of_the_types_sglang_reads_pass(params):
    check_session_params(params)


def test_a_session_forgets_its_least_recently_used_finished_requests_down_to_the_budget():
    kept = [("a", 400, True), ("b", 400, False), ("c", 400, True), ("d", 400, True), ("new", 400, False)]
    assert history_to_forget(kept, 2000) == []
    assert history_to_forget(kept, 1999) == ["a"]
    assert history_to_forget(kept, 1200) == ["a", "c"]  # "b" still runs: kept
    assert history_to_forget(kept, 10) == ["a", "c", "d"]  # the newest is kept past the budget


def test_the_message_for_a_rid_the_session_does_not_hold_names_the_budget():
    message = unknown_session_rid("turn-3", 65536)
    assert "'turn-3'" in message and "65536 tokens" in message and "--mint-session-history-tokens" in message


@pytest.mark.parametrize("slots, configured, limit", [
    (256, None, 64), (8, None, 2), (2, None, 1), (3, None, 1), (1, None, 0),  # a quarter, at least 1, never all
    (256, 10, 10), (8, 100, 7), (1, 5, 0),  # as configured, never all
])
def test_streaming_sessions_never_hold_every_request_slot(slots, configured, limit):
    assert streaming_session_limit(slots, configured) == limit


def test_a_streaming_turn_past_half_the_kv_cache_is_refused_naming_the_budget():
    budget = streaming_kv_budget(4096)
    assert budget == 2048
    assert streaming_turn_refusal(1024, 1024, budget) is None  # exactly the budget fits
    refusal = streaming_turn_refusal(1025, 1024, budget)
    assert "at most 2048 tokens" in refusal and "to 2049" in refusal and "/close_session" in refusal


def test_a_streaming_turn_counts_its_new_tokens_as_sglang_caps_them():
    assert streaming_turn_tokens(700, 2, 2048) == 702
    assert streaming_turn_tokens(700, 100_000, 2048) == 2047  # capped to the longest request, less one
    assert streaming_turn_tokens(700, None, 2048) == 2047  # no limit asked: all the room there is
    assert streaming_turn_tokens(3000, 2, 2048) == 3000  # past the longest request: SGLang refuses it anyway
