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

Example with 2 ranks and loads [9, 1] (bound ceil(1.25 * 11 / 2) = 7): an
adapter preferring rank 0 goes to rank 1 until rank 0 drains to 7.
"""

from __future__ import annotations

import hashlib
import math

DEFAULT_SLACK = 0.25
MIN_BOUND = 4


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
