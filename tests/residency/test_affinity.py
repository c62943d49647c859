"""Rendezvous hashing with bounded load (residency/affinity.py): pure logic."""

from __future__ import annotations

from collections import Counter

from sglang_mint.residency.affinity import LOAD_REFRESH_S, RECENT_S, DispatchLoads, pick_rank, preference


def test_an_adapter_keeps_its_rank_while_load_allows():
    ranks = [0, 1, 2, 3]
    for key in (f"acme/{i}" for i in range(50)):
        first = preference(key, ranks)[0]
        assert pick_rank(key, [0, 0, 0, 0], ranks) == first
        assert pick_rank(key, [3, 3, 3, 3], ranks) == first


def test_adapters_spread_over_ranks():
    counts = Counter(preference(f"a/{i}", [0, 1])[0] for i in range(1000))
    assert 400 < counts[0] < 600


def test_an_overloaded_rank_is_skipped_for_the_next_choice():
    key = "acme/hot"
    first, second = preference(key, [0, 1])
    loads = [0, 0]
    loads[first] = 9
    loads[second] = 1  # bound: ceil(1.25 * 11 / 2) = 7
    assert pick_rank(key, loads, [0, 1]) == second
    loads[first] = 3  # bound: ceil(1.25 * 5 / 2) = 4
    assert pick_rank(key, loads, [0, 1]) == first


def test_removing_a_rank_moves_only_its_adapters():
    keys = [f"k/{i}" for i in range(500)]
    before = {k: preference(k, [0, 1, 2])[0] for k in keys}
    after = {k: preference(k, [0, 1])[0] for k in keys}
    assert all(after[k] == before[k] for k in keys if before[k] != 2)
    assert any(before[k] == 2 for k in keys)


def test_a_few_requests_never_spill():
    # loads lag dispatches: [2, 0] is noise, not an overloaded rank (bound max(4, ceil(1.25 * 3 / 2)))
    key = "acme/x"
    first, second = preference(key, [0, 1])
    loads = [0, 0]
    loads[first] = 3
    assert pick_rank(key, loads, [0, 1]) == first
    loads[first] = 4
    assert pick_rank(key, loads, [0, 1]) == second


def test_only_active_ranks_are_picked():
    assert pick_rank("x", [0, 100, 0], [1]) == 1


def test_a_dispatch_counts_until_its_ranks_snapshot_is_newer():
    loads = DispatchLoads()
    assert loads.snapshots_due(10.0) and not loads.snapshots_due(10.0 + LOAD_REFRESH_S / 2)
    assert loads.snapshots_due(10.0 + 2 * LOAD_REFRESH_S)
    loads.dispatched(1, 10.0, wall=100.0)
    loads.dispatched(1, 10.001, wall=100.001)
    assert loads.loads([3, 0], [99.9, 99.9], 10.005) == [3, 2]  # snapshots older than both dispatches
    assert loads.loads([3, 1], [99.9, 100.0005], 10.005) == [3, 2]  # rank 1's shows the first only
    assert loads.loads([3, 0], [99.9, 99.9], 10.001 + RECENT_S * 1.5) == [3, 0]  # an idle scheduler sends none


def test_sequential_requests_stay_on_their_rank_while_snapshots_lag():
    """One client, one request at a time, 25 ms each, on 2 ranks. Each rank's snapshot lags as SGLang's
    can: the one taken as a request starts (load 1) is still the newest when the next is dispatched.
    Counting every dispatch of the last RECENT_S on top of it counted each ended request again (1 + 3
    at this pace, the bound), and the fourth request spilled to the other rank."""
    key = "acme/x"
    home = preference(key, [0, 1])[0]
    loads, snapshot_loads, snapshot_times = DispatchLoads(), [0, 0], [0.0, 0.0]
    picked = []
    for k in range(12):
        now = wall = 1000.0 + 0.025 * k
        rank = pick_rank(key, loads.loads(snapshot_loads, snapshot_times, now), [0, 1])
        loads.dispatched(rank, now, wall)
        picked.append(rank)
        snapshot_loads[rank], snapshot_times[rank] = 1, wall + 0.001  # published at its prefill, never at its end
    assert picked == [home] * 12
