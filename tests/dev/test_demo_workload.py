"""The demo's zipf run reports its throughput over the time the requests took (dev/demo.py).

It used to look for the end only every 5 s, between progress rows, and divided by that: every
`make demo` had reported up to 5 s too long a run (e.g. 98.2 req/s for a run whose requests were
all answered 5 s earlier). Here a stand-in client answers at once and a loopback stand-in serves
/mint/status, so the whole run takes a fraction of a second unless it waits for a row's tick.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

from loopback_stub import loopback_stub

from sglang_mint.dev.demo import zipf_workload

STATUS = {"schedulers": [{"hit_rate": 0.5, "cold_loads": 1, "cold_load_p50_s": 0.001, "cold_load_p99_s": 0.002,
                          "resident": 1, "host_bytes": 1 << 20}]}


def test_the_run_ends_when_its_last_answer_comes_and_its_rate_counts_that_time(capsys):
    answered = []
    client = SimpleNamespace(completions=SimpleNamespace(create=lambda **kw: answered.append(kw["model"])))
    with loopback_stub(lambda method, path, body: (200, STATUS)) as url:
        t0 = time.perf_counter()
        zipf_workload(client, url, size=100, requests=200, concurrency=8)
        seconds = time.perf_counter() - t0
    assert len(answered) == 200
    assert seconds < 4.0, f"the run waited for a progress tick (5 s): {seconds:.1f} s"
    [rate] = re.findall(r"200 requests, 0 failed, ([0-9.]+) req/s", capsys.readouterr().out)
    assert float(rate) > 200 / 4.0  # over the run's own time, not a 5 s tick
