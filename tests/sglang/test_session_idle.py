"""A session opened with limits is idle only once its requests are done (sglang/session_bounds.py), on SGLang's own
Session objects, no server: SGLang counts the timeout from a request's arrival, so a request that ran longer
than the timeout had its session closed under it. A real server: tests/sglang/test_sessions.py."""

from __future__ import annotations

import time
from types import SimpleNamespace

from sglang_mint.sglang.session_bounds import IDLE_ONLY_WHEN_DONE_ATTR, _around_session_is_timed_out


# A session times out after 600 s and the tests move its last activity 1000 s back: the seconds a starved
# test process may take between two lines can make neither a busy session idle nor an idle one busy.
TIMEOUT_S = 600.0


def session(streaming: bool, limits: bool = True):
    from sglang.srt.session.session_controller import Session

    opened = Session(1000, streaming=streaming, timeout=TIMEOUT_S)
    opened.last_active_time = time.monotonic() - 1000  # its last request arrived 1000 s ago
    if limits:
        setattr(opened, IDLE_ONLY_WHEN_DONE_ATTR, True)
    return opened


def timed_out(opened) -> bool:
    from sglang.srt.session.session_controller import Session

    return _around_session_is_timed_out(Session.is_timed_out, opened)


def test_a_streaming_session_whose_request_runs_is_not_idle_and_its_idle_time_starts_over():
    running = session(streaming=True)
    running._inflight = True
    t0 = time.monotonic()
    assert not timed_out(running)
    assert t0 <= running.last_active_time <= time.monotonic()  # its idle time starts over
    running._inflight = False
    assert not timed_out(running)  # done just now: idle from here
    running.last_active_time -= 1000
    assert timed_out(running)


def test_a_non_streaming_session_is_idle_once_every_request_is_finished():
    opened = session(streaming=False)
    request = SimpleNamespace(finished=lambda: False)
    opened.req_nodes["rid-1"] = SimpleNamespace(req=request)
    assert not timed_out(opened)
    request.finished = lambda: True
    opened.last_active_time -= 1000
    assert timed_out(opened)


def test_a_session_opened_without_limits_keeps_sglang_s_rule():
    running = session(streaming=True, limits=False)
    running._inflight = True
    assert timed_out(running)  # SGLang's: 1000 s since its request arrived, past its 600 s
