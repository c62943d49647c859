"""Data parallelism with adapter affinity, in SGLang's DP controller (docs/architecture.md, step 3).

A catalog adapter's requests go to the DP rank that keeps it warm
(residency/affinity.py) through ``routed_dp_rank``, which every SGLang dispatch
method honours; other requests keep SGLang's dispatch, and ``--mint-dp-dispatch
sglang`` turns it off. The controller, a process of its own, checks its hooks
before it starts the schedulers and its internals once it exists.
"""

from __future__ import annotations

import time

from sglang_mint.lora_id import is_catalog_lora_id, parse_lora_id
from sglang_mint.residency.affinity import DispatchLoads, pick_rank
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_applied, verify_startup


def _before_controller_init(controller, server_args, *args, **kwargs):
    if mint_config(server_args) is not None:
        verify_applied("frontend")


def _after_controller_init(result, controller, server_args, *args, **kwargs):
    if mint_config(server_args) is not None:
        verify_startup("frontend", controller=controller)
    return result


def _around_dispatching_with_trace(original, controller, req, *args, **kwargs):
    config = mint_config(controller.server_args)
    lora_id = getattr(req, "lora_id", None)
    if (config is not None and config.dp_dispatch == "affinity" and is_catalog_lora_id(lora_id)
            and getattr(req, "routed_dp_rank", None) is None):
        now = time.perf_counter()
        loads, budget = controller.__dict__.setdefault("_mint_loads", DispatchLoads()), controller.dp_budget
        if loads.snapshots_due(now):
            budget.update_budget(controller.load_snapshot_reader.read_all())
        rank = pick_rank(parse_lora_id(lora_id)[0], loads.loads(budget.total_requests, budget.last_timestamp, now),
                         list(controller._active_workers))
        loads.dispatched(rank, now, time.time())  # the clock the schedulers stamp their snapshots with
        req.routed_dp_rank = rank
    return original(controller, req, *args, **kwargs)
