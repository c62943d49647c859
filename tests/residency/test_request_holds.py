"""A request's hold on its adapter: one per request, however often the engine queues it."""

from __future__ import annotations

import gc

from test_status_after_release import KEYS, Catalog, Engine, Metrics

from sglang_mint.residency.host_bytes import node_status
from sglang_mint.residency.request_holds import on_arrival, release_hold
from sglang_mint.residency.scheduler_residency import SchedulerResidency


class Req:
    def __init__(self, rid: str, lora_id: str):
        self.rid, self.lora_id = rid, lora_id


def in_use(residency) -> int:
    residency.install_ready()  # the loop's next iteration drains what was released
    return node_status(residency)["adapters_in_use"]


def test_a_request_queued_again_keeps_one_hold_and_its_end_releases_it():
    """SGLang re-adds a request preempted for priority, or retracted when generation pauses,
    through the same queueing call: its end must release everything it holds, at once."""
    residency = SchedulerResidency(Engine(), Catalog(), budget_bytes=1 << 20, load_workers=1, metrics=Metrics())
    req, other = Req("r0", KEYS[0]), Req("r1", KEYS[1])
    gc.disable()  # a hold left to the collector must not be let go by it during the test
    try:
        on_arrival(residency, req)
        on_arrival(residency, other)
        assert in_use(residency) == 2
        on_arrival(residency, req)  # queued again without ending
        assert in_use(residency) == 2
        release_hold(req)
        assert in_use(residency) == 1  # the other request still holds its adapter: the count can fail
        release_hold(other)
        assert in_use(residency) == 0
    finally:
        gc.enable()
