"""/mint/status right after the last response: requests that ended are not reported in use.

Replays, without SGLang, the order in which SGLang 0.5.23's scheduler calls sglang-mint's hooks
(sglang_mint/sglang/residency.py) at the end of a storm, as in
tests/sglang/test_pressure.py::test_more_cold_adapters_than_memory_and_slots:

1. the last batch's requests finish: ``SchedulerOutputStreamer.stream_output`` sends their last
   output, then ``_after_stream_output`` -> ``release_hold`` -> the finalizer ->
   ``SchedulerResidency.release``, which only queues the hold (nothing calls ``on_end`` there);
2. the client has every response and asks ``/mint/status``; the scheduler's next iteration calls
   ``Scheduler.ingest_requests``, which receives the GetInternalStateReq and answers it inside
   ``process_input_requests`` (``_after_get_internal_state`` -> ``node_status`` -> ``status()``);
3. only then does ``_after_ingest_requests`` -> ``install_ready`` -> ``_drain_released`` let the
   holds go.

So a status read that reaches the scheduler before its next iteration (a loaded machine: the
scheduler was descheduled after step 1) reported the last batch's 4 adapters in use.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from sglang_mint.residency.host_bytes import ADAPTER_OVERHEAD_BYTES, node_status
from sglang_mint.residency.metrics import SchedulerMetrics
from sglang_mint.residency.scheduler_residency import SchedulerResidency

KEYS = [f"mint:t{i % 3}/a{i:02d}@1" for i in range(4)]  # the last batch: --max-loras-per-batch 4
NBYTES = 60_000


class Catalog:
    lookups = 0

    def read_source(self, rev):
        return "disk"

    def get_revision(self, adapter_id, revision):
        loaded = NBYTES - ADAPTER_OVERHEAD_BYTES
        return SimpleNamespace(adapter_id=adapter_id, revision=revision, size_bytes=loaded,
                               loaded_bytes=loaded, tensor_count=0)


class Engine:
    def __init__(self):
        self.installed = {}

    def read(self, key, rev):
        return f"adapter {key}", NBYTES

    def attach(self, key, share, seq):
        raise AssertionError("no node share here")

    def install(self, key, adapter):
        self.installed[key] = adapter

    def unload(self, key):
        self.installed.pop(key, None)

    def is_resident(self, key):
        return key in self.installed


def Metrics():
    return SchedulerMetrics(enabled=False)  # every instrument a no-op


def serve_last_batch() -> SchedulerResidency:
    """Four requests, one per adapter, arrive, are read, admitted and run; their last outputs stream."""
    residency = SchedulerResidency(Engine(), Catalog(), budget_bytes=4 * NBYTES, load_workers=1, metrics=Metrics())
    for key in KEYS:
        residency.on_arrival(key)  # _before_add_request_to_queue
    deadline = time.monotonic() + 10
    while residency.reading:  # _after_ingest_requests, once per loop iteration
        assert time.monotonic() < deadline
        residency.install_ready()
        time.sleep(0.001)
    assert all(residency.admit(key) is None for key in KEYS)  # _around_can_schedule_lora_req
    for i, key in enumerate(KEYS):
        residency.release(f"r{i}", key)  # _after_stream_output -> release_hold -> the finalizer
    return residency


def test_a_status_read_after_the_last_output_reports_no_adapter_in_use():
    residency = serve_last_batch()
    # The next iteration: ingest_requests answers GetInternalStateReq before its AFTER hook runs.
    status = node_status(residency)
    assert status["adapters_in_use"] == 0 and status["host_reserved_bytes"] == 0, status


def test_the_holds_were_released_not_leaked():
    # Control: the same holds are gone once the loop's next install_ready drains them.
    residency = serve_last_batch()
    residency.install_ready()  # _after_ingest_requests
    assert node_status(residency)["adapters_in_use"] == 0
