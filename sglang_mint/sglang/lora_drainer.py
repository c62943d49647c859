"""SGLang's LoRA drainer (``--lora-drain-wait-threshold``) keeps only the adapters it drains.

``LoRADrainer`` keeps an ``AdapterStats`` for every lora_id it has seen, in a defaultdict nothing
prunes, and walks all of them at every prefill scheduling step (``update_draining_state``). Under
``--enable-mint`` a lora_id is a catalog revision, so the dict grew with every adapter and every
publish the server ever served: after 100,000 of them a step spent 16.6 ms there on this machine
(``bench/lora_drainer_bench.py``). Every count in an entry is recounted from the queues at each
update; the one thing an entry keeps from one step to the next is ``is_draining_for``, and
``can_schedule`` reads nothing else of an entry without it. Such an entry holds nothing: it is
dropped after each update and after each ``can_schedule`` that made or read it, and the adapter's
next request gets a fresh one, as its first did. A prefill-decode decode server, which asks
``can_schedule`` and never updates, keeps none either.
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_internals

PRUNED_ATTR = "_mint_pruned"  # a drainer whose idle entries are dropped after each update and can_schedule
DRAINING_ATTR = "_mint_draining"  # {(lora_id, the lora_id it drains for)} after the last update
DRAINS_ATTR = "_mint_drains"  # the drains begun since the start


def _after_init_lora_drainer(result, scheduler, *args, **kwargs):
    """Scheduler.init_lora_drainer AFTER: under ``--enable-mint`` its drainer keeps only the adapters it drains."""
    drainer = getattr(scheduler, "lora_drainer", None)
    if drainer is not None and mint_config(scheduler.server_args) is not None:
        verify_internals("scheduler", lora_drainer=drainer)
        setattr(drainer, PRUNED_ATTR, True)
    return result


def _after_update_draining_state(result, drainer, *args, **kwargs):
    """LoRADrainer.update_draining_state AFTER: the entries that drain for no adapter are dropped, and the
    drains this step began are counted."""
    if getattr(drainer, PRUNED_ATTR, False):
        stats = drainer.adapter_to_stats
        for lora_id in [lora_id for lora_id, entry in stats.items() if entry.is_draining_for is None]:
            del stats[lora_id]
        draining = {(lora_id, entry.is_draining_for) for lora_id, entry in stats.items()}
        begun = draining - getattr(drainer, DRAINING_ATTR, set())
        setattr(drainer, DRAINS_ATTR, getattr(drainer, DRAINS_ATTR, 0) + len(begun))
        setattr(drainer, DRAINING_ATTR, draining)
    return result


def _after_can_schedule(result, drainer, req, *args, **kwargs):
    """LoRADrainer.can_schedule AFTER: the entry it read (or made) is dropped unless it drains for an adapter."""
    if getattr(drainer, PRUNED_ATTR, False):
        entry = drainer.adapter_to_stats.get(req.lora_id)
        if entry is not None and entry.is_draining_for is None:
            del drainer.adapter_to_stats[req.lora_id]
    return result


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    """Scheduler.get_internal_state AFTER: how many adapters the drainer keeps, how many it drains now, and
    how many drains it has begun."""
    drainer = getattr(scheduler, "lora_drainer", None)
    if drainer is not None and getattr(drainer, PRUNED_ATTR, False):
        stats = drainer.adapter_to_stats
        result.internal_state["mint_lora_drainer"] = {
            "adapters_kept": len(stats),
            "draining": sum(1 for entry in stats.values() if entry.is_draining_for is not None),
            "drains": getattr(drainer, DRAINS_ATTR, 0),  # adapters drained for a starving one, since the start
        }
    return result
