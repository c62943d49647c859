"""The idle timeout a new SGLang session gets, and the refusal past the limit (frontend/session_bounds.py).
A real server: tests/sglang/test_sessions.py."""

from __future__ import annotations

import math

import pytest

from sglang_mint.frontend.session_bounds import SessionsFull, session_timeout, sessions_full


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
