"""The middleware warm-up: SMG compiles a new middleware build once per middleware thread (up to
4), so each round of the warm-up keeps that many requests in flight at once; a thread busy
compiling then leaves the next request to another. Against a loopback stand-in for SMG that
counts requests in flight (whether SMG compiles per thread is SMG's, read from its source; on
this 2-core machine SMG has 2 threads and the real gateway test warms both either way)."""

from __future__ import annotations

import threading
import time

import pytest
from loopback_stub import loopback_stub

from sglang_mint.gateway.middleware import SMG_WASM_THREADS_MAX, warm_adapter_route


SLOW_S, FAST_S = 4.0, 3.0  # a "compiling" request, and the most a fast round may take at nice 19


class Stand:
    def __init__(self, slow_first: int):
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = self.seen = 0
        self.slow_first = slow_first  # the first this many requests "compile"


@pytest.fixture
def smg():
    stand = Stand(slow_first=SMG_WASM_THREADS_MAX)

    def answer(method, path, body):
        with stand.lock:
            stand.in_flight += 1
            stand.most_in_flight = max(stand.most_in_flight, stand.in_flight)
            stand.seen += 1
            slow = stand.seen <= stand.slow_first
        time.sleep(SLOW_S if slow else 0.05)
        with stand.lock:
            stand.in_flight -= 1
        return 404, b""

    with loopback_stub(answer) as url:
        yield url, stand


def test_each_round_keeps_every_middleware_thread_busy_and_a_fast_round_ends_it(smg):
    url, stand = smg
    slowest = warm_adapter_route(url, timeout=30, fast_s=FAST_S)
    assert stand.most_in_flight == SMG_WASM_THREADS_MAX  # all of the first round at once
    assert len(slowest) == 2 and slowest[0] >= SLOW_S and slowest[1] < FAST_S, slowest
    assert stand.seen == 2 * SMG_WASM_THREADS_MAX
