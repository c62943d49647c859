"""Tensor-parallel ranks agree on what changes in their adapter residency.

With ``--tp-size N`` every rank runs its own scheduler over the same requests
(rank 0 broadcasts them), and the ranks must build identical batches: a
request admitted on one rank and not on another splits the ranks' collectives
and the server dies. Residency has three inputs that differ from rank to rank:

- when a background read finishes (and whether it failed);
- when a request's hold is released (the weakref finalizer runs at garbage
  collection, not at a fixed point of the loop);
- the clock, which ages remembered failures.

So each loop iteration, while any catalog request is held or any read is
unsettled (state that is itself agreed, so every rank makes the same call),
the ranks exchange what they saw over the TP CPU group (gloo), and act only
on what every rank saw::

    rank 0 finished {a: ok, b: ok}   rank 1 finished {a: ok, c: failed "..."}
    -> install a on both; b and c wait for the other rank's result

A read that failed on any rank fails on all of them with that rank's message,
so every rank answers the same 422. Every later decision (reads started,
evictions, admission) follows from agreed state and is the same everywhere.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class RankView:
    """What one rank saw since the last exchange."""

    finished: dict[str, str | None] = field(default_factory=dict)  # lora id -> None (ok) or failure message
    ended: list[str] = field(default_factory=list)  # rids whose holds were released
    now: float = 0.0


@dataclass
class Agreed:
    installs: list[str]  # finished everywhere, ok everywhere, in key order
    failures: dict[str, str]  # finished everywhere, failed somewhere: the first failing rank's message
    ended: list[str]  # released on every rank
    now: float  # rank 0's clock


def agree(views: list[RankView]) -> Agreed:
    """Combine every rank's view (index = rank). Pure: the same views give the same answer on every rank."""
    done = set(views[0].finished)
    for v in views[1:]:
        done &= set(v.finished)
    installs, failures = [], {}
    for key in sorted(done):
        message = next((v.finished[key] for v in views if v.finished[key] is not None), None)
        if message is None:
            installs.append(key)
        else:
            failures[key] = message
    ended = set(views[0].ended)
    for v in views[1:]:
        ended &= set(v.ended)
    return Agreed(installs, failures, sorted(ended), views[0].now)


class TensorParallelAgreement:
    """Exchanges ``RankView``s among the TP ranks of one scheduler group."""

    def __init__(self, cpu_group, size: int):
        self.group = cpu_group
        self.size = size
        self.exchanges = 0

    def exchange(self, mine: RankView) -> Agreed:
        import torch.distributed as dist

        mine.now = time.monotonic()
        views: list = [None] * self.size
        dist.all_gather_object(views, mine, group=self.group)
        self.exchanges += 1
        return agree(views)

    def gather(self, obj) -> list:
        """Every rank's ``obj`` (index = rank); every rank must call it at the same point."""
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj, group=self.group)
        return out
