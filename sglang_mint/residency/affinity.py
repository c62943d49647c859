"""Which data-parallel rank serves an adapter: rendezvous hashing with bounded load.

Every adapter has a preference order over the DP ranks, highest random weight
first (``blake2b(adapter id, rank)``), so requests for one adapter go to the
same rank while it has room, and that rank keeps it warm: a hot adapter is
read once, not once per rank. A rank is skipped while its load (running +
waiting requests) reaches ``ceil((1 + slack) * (total + 1) / ranks)``, the
bound of consistent hashing with bounded loads (Mirrokni, Thorup, Zadimoghaddam
2018), so one hot adapter cannot pile its whole traffic on one rank; the bound
is never below ``MIN_BOUND``, since at a handful of requests the loads are
noise (SGLang's snapshots lag its dispatches) and a spill costs a cold read. Adding or
removing a rank moves only the adapters whose first choice it is.

The snapshots also lag the ends of requests: a rank publishes when it next loops, so for a
moment after a burst its last snapshot can still count requests that have ended, and a request
dispatched then may spill once. That costs one cold read; the next snapshot sets it right.

Example with 2 ranks and loads [9, 1] (bound ceil(1.25 * 11 / 2) = 7): an
adapter preferring rank 0 goes to rank 1 until rank 0 drains to 7.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque

DEFAULT_SLACK = 0.25
MIN_BOUND = 4
LOAD_REFRESH_S = 0.02  # as SGLang's own refresh: snapshots are re-read at most every 20 ms
RECENT_S = 0.1  # a dispatch counts toward its rank's load this long, until snapshots show it


def preference(key: str, ranks: list[int]) -> list[int]:
    """``ranks`` from most to least preferred for ``key``; the same on every process and run."""
    def weight(rank: int) -> bytes:
        return hashlib.blake2b(f"{rank}\0{key}".encode(), digest_size=8).digest()

    return sorted(ranks, key=weight, reverse=True)


def pick_rank(key: str, loads: list[int], ranks: list[int], slack: float = DEFAULT_SLACK) -> int:
    """The rank for one more request of ``key``, given each rank's load (indexed by rank)."""
    if not ranks:
        raise ValueError("no ranks to pick from")
    bound = max(MIN_BOUND, math.ceil((1 + slack) * (sum(loads[r] for r in ranks) + 1) / len(ranks)))
    for rank in preference(key, ranks):
        if loads[rank] < bound:
            return rank
    return min(ranks, key=lambda r: loads[r])


class DispatchLoads:
    """Running + waiting requests per DP rank as the dispatcher sees them: the schedulers' last load
    snapshots, plus what it sent since each rank's snapshot was taken (not in it yet).

    SGLang's own DPBudget adds each dispatch to the count until a newer snapshot replaces it. Here a
    dispatch counts while it is newer than its rank's snapshot (the scheduler stamps each with its
    wall clock) and at most RECENT_S: an idle scheduler publishes none, and a request that ended is
    in no snapshot at all, so counting every dispatch of the last RECENT_S would count it twice.
    With snapshots [3, 0] taken at wall time 100.0 and a dispatch to rank 1 at 100.004, ``loads`` is
    [3, 1]; once rank 1 publishes a snapshot taken after 100.004, or 100 ms later, it is what the
    snapshots say. (A rank on another node stamps with that node's clock: a skew between the two
    makes a dispatch count until RECENT_S, or not at all, which is SGLang's own DPBudget behaviour.)
    """

    def __init__(self):
        self._read_at: float | None = None
        self._recent: deque[tuple[float, float, int]] = deque()  # (when, wall clock, rank) of each dispatch

    def snapshots_due(self, now: float) -> bool:
        """Whether to re-read the schedulers' snapshots now (at most every LOAD_REFRESH_S); True
        also records the read."""
        if self._read_at is not None and now - self._read_at < LOAD_REFRESH_S:
            return False
        self._read_at = now
        return True

    def loads(self, snapshot_loads: list[int], snapshot_times: list[float], now: float) -> list[int]:
        """``snapshot_loads[r]`` and ``snapshot_times[r]``: rank r's last snapshot and its wall-clock stamp."""
        recent = self._recent
        while recent and now - recent[0][0] > RECENT_S:
            recent.popleft()
        loads = list(snapshot_loads)
        for _, wall, rank in recent:
            if wall > snapshot_times[rank]:
                loads[rank] += 1
        return loads

    def dispatched(self, rank: int, now: float, wall: float) -> None:
        self._recent.append((now, wall, rank))
