"""The demo's zipf run reports its throughput over the time the requests took (dev/demo.py).

It used to look for the end only every 5 s, between progress rows, and divided by that: every
`make demo` had reported up to 5 s too long a run (e.g. 98.2 req/s for a run whose requests were
all answered 5 s earlier). Here a stand-in client answers at once and a loopback stand-in serves
/mint/status, and the run's clock is a fake one that only the answers move (and a sleep, as the old
wait for a tick did): the rate must be the requests over their answers' time, however slowly the
machine runs the test.
"""

from __future__ import annotations

import re
import threading
from concurrent.futures import wait
from types import SimpleNamespace

from hung import HUNG_AFTER_S
from loopback_stub import loopback_stub

from sglang_mint.dev import demo
from sglang_mint.dev.demo import zipf_workload

STATUS = {"schedulers": [{"hit_rate": 0.5, "cold_loads": 1, "cold_load_p50_s": 0.001, "cold_load_p99_s": 0.002,
                          "resident": 1, "host_bytes": 1 << 20}]}
ANSWER_S = 1 / 64  # each answer's time on the fake clock: 200 of them take 3.125 s, 64.0 req/s


def test_the_run_ends_when_its_last_answer_comes_and_its_rate_counts_that_time(capsys, monkeypatch):
    answered, clock, lock = [], [0.0], threading.Lock()
    waiting = threading.Event()  # the run waits for its answers: only then do they come, so it sees them come

    def answer(**kw):
        assert waiting.wait(HUNG_AFTER_S)
        with lock:
            answered.append(kw["model"])
            clock[0] += ANSWER_S

    def sleep(seconds):  # time passing without an answer
        waiting.set()
        with lock:
            clock[0] += seconds

    def wait_for_answers(fs, timeout):
        # No progress row before the end, however slowly the answers come: one before the first
        # answer would divide by 0 s on this clock.
        waiting.set()
        return wait(fs, timeout=HUNG_AFTER_S)

    monkeypatch.setattr(demo, "time", SimpleNamespace(perf_counter=lambda: clock[0], sleep=sleep))
    monkeypatch.setattr(demo, "wait", wait_for_answers)
    client = SimpleNamespace(completions=SimpleNamespace(create=answer))
    with loopback_stub(lambda method, path, body: (200, STATUS)) as url:
        zipf_workload(client, url, size=100, requests=200, concurrency=8)
    assert len(answered) == 200
    [rate] = re.findall(r"200 requests, 0 failed, ([0-9.]+) req/s", capsys.readouterr().out)
    assert float(rate) == 200 / (200 * ANSWER_S), "not over the answers' time: the run waited for a tick"
