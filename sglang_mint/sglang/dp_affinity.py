"""Data parallelism with adapter affinity, in SGLang's DP controller.

With ``--dp-size N`` SGLang's ``DataParallelController`` hands each request to
one DP rank (round robin by default). A catalog adapter's requests then land
on every rank and each rank reads the adapter on its own. With
``--enable-mint --mint-catalog`` this hook picks the rank first
(residency/affinity.py: the adapter's preferred rank while its load allows)
and sets ``routed_dp_rank``, which SGLang's every dispatch method honours.
Base-model requests, adapters from ``--lora-paths`` and requests that already
name a rank keep SGLang's dispatch. ``--mint-dp-dispatch sglang`` turns it off.

The controller runs in a process of its own and checks that SGLang applied its
hooks before it starts the schedulers: a dispatch hook that failed to apply
would otherwise turn affinity into round robin without a word.
"""

from __future__ import annotations

import time

from sglang_mint.lora_id import is_catalog_lora_id, parse_lora_id
from sglang_mint.residency.affinity import DispatchLoads, pick_rank
from sglang_mint.sglang.flags import mint_config


def _before_controller_init(controller, server_args, *args, **kwargs):
    if mint_config(server_args) is not None:
        from sglang_mint.sglang import hooks

        hooks.verify_applied("frontend")


def _around_dispatching_with_trace(original, controller, req, *args, **kwargs):
    config = mint_config(controller.server_args)
    lora_id = getattr(req, "lora_id", None)
    if (config is not None and config.dp_dispatch == "affinity" and is_catalog_lora_id(lora_id)
            and getattr(req, "routed_dp_rank", None) is None):
        now = time.perf_counter()
        loads, budget = controller.__dict__.setdefault("_mint_loads", DispatchLoads()), controller.dp_budget
        if loads.snapshots_due(now):
            budget.update_budget(controller.load_snapshot_reader.read_all())
        rank = pick_rank(parse_lora_id(lora_id)[0], loads.loads(budget.total_requests, now),
                         list(controller._active_workers))
        loads.dispatched(rank, now)
        req.routed_dp_rank = rank
    return original(controller, req, *args, **kwargs)
