"""A request's hold on its catalog adapter, kept on the engine's request object.

The engine's scheduler (sglang_mint/sglang/residency.py for SGLang) calls these with its
request: any object with ``rid``, ``lora_id`` and ``set_finish_with_abort(reason,
status_code, err_type)`` that takes attributes and weak references.
"""

from __future__ import annotations

import time
import weakref

from sglang_mint.residency.scheduler_residency import SchedulerResidency


def on_arrival(residency: SchedulerResidency, req) -> None:
    """A catalog adapter's request entered the queue: hold its adapter until ``req`` ends.

    A request the engine queues again without ending it (SGLang re-adds one preempted for
    priority, or retracted when generation pauses) keeps the hold it has: holding twice would
    leave the second hold to the garbage collector.
    """
    if getattr(req, "_mint_hold", None) is not None:
        return
    lora_id = req.lora_id
    resident = residency.on_arrival(lora_id)
    # Called once: by release_hold when the request ends, or by the collector if it never does.
    req._mint_hold = weakref.finalize(req, residency.release, req.rid, lora_id)
    req._mint_hold.atexit = False
    if not resident:
        req._mint_waiting_since = time.monotonic()


def release_hold(req) -> None:
    """The request ended: let go of its adapter (a no-op after the first call, or for others)."""
    hold = getattr(req, "_mint_hold", None)
    if hold is not None:
        req._mint_hold = None
        hold()


def admit(residency: SchedulerResidency, req) -> bool | None:
    """Admission for a catalog adapter's request: None = ask the engine, False = wait, True =
    finished with its load's failure, now a base-model request (the engine still decides its batch)."""
    decision = residency.admit(req.lora_id)
    if decision is None:
        waited_since = getattr(req, "_mint_waiting_since", None)
        if waited_since is not None:
            req._mint_waiting_since = None
            residency.metrics.queue_wait_seconds.observe(time.monotonic() - waited_since)
        return None
    if decision is False:
        return False
    # Finish it with the reason; it runs as a one-token base-model prefill.
    req.set_finish_with_abort(decision, status_code=422, err_type="AdapterLoadError")
    req.lora_id = None
    return True
