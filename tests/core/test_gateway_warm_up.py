"""The middleware warm-up: SMG compiles a new middleware build once per middleware thread (up to
4), so each round of the warm-up keeps that many requests in flight at once; a thread busy
compiling then leaves the next request to another. Against a loopback stand-in for SMG that
counts requests in flight (whether SMG compiles per thread is SMG's, read from its source; on
this 2-core machine SMG has 2 threads and the real gateway test warms both either way)."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from hung import HUNG_AFTER_S
from loopback_stub import loopback_stub

from sglang_mint.gateway import middleware
from sglang_mint.gateway.middleware import SMG_WASM_THREADS_MAX, warm_adapter_route

# How long each round's requests take on the warm-up's clock, a fake one: "compiling", then compiled. On
# the wall clock a starved test process made a fast round look slow; here a round takes what it says.
SLOW_S, FAST_S = 4.0, 0.25


class Stand:
    def __init__(self, clock: list[float]):
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = self.seen = self.rounds = 0
        self.clock = clock
        # A round's requests are answered once all of them are in flight, however slowly they come.
        self.all_in_flight = threading.Barrier(SMG_WASM_THREADS_MAX, action=self.round_took_its_time)

    def round_took_its_time(self):
        self.clock[0] += SLOW_S if self.rounds == 0 else FAST_S  # the first round compiles
        self.rounds += 1


@pytest.fixture
def smg(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(middleware, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    stand = Stand(clock)

    def answer(method, path, body):
        with stand.lock:
            stand.in_flight += 1
            stand.most_in_flight = max(stand.most_in_flight, stand.in_flight)
            stand.seen += 1
        stand.all_in_flight.wait(HUNG_AFTER_S)  # fewer at once: broken after HUNG_AFTER_S, no answer
        with stand.lock:
            stand.in_flight -= 1
        return 404, b""

    with loopback_stub(answer) as url:
        yield url, stand


def test_each_round_keeps_every_middleware_thread_busy_and_a_fast_round_ends_it(smg):
    url, stand = smg
    slowest = warm_adapter_route(url, timeout=HUNG_AFTER_S, fast_s=1.0)
    assert stand.most_in_flight == SMG_WASM_THREADS_MAX  # every request of a round at once
    assert slowest == [SLOW_S, FAST_S]  # the compiling round, then a fast one: it ends there
    assert stand.seen == 2 * SMG_WASM_THREADS_MAX
