import random

import pytest

from sglang_mint.residency import HostLRU


def load(lru, key, nbytes):
    """A read that the policy lets start at once; returns the victims it named."""
    victims = lru.reserve(key, nbytes)
    assert victims is not None, f"read of {key} was told to wait"
    for victim in victims:
        lru.evicted(victim)
    lru.loaded(key, nbytes)
    return victims


def test_evicts_coldest_idle_first_to_make_room():
    lru = HostLRU(100)
    assert load(lru, "a", 40) == [] and load(lru, "b", 40) == []
    lru.touched("a")  # now b is the coldest
    assert load(lru, "c", 40) == ["b"]
    assert lru.keys() == ["a", "c"] and lru.bytes == 80


def test_a_held_adapter_is_never_evicted_and_the_read_waits():
    lru = HostLRU(100)
    lru.hold("a")
    load(lru, "a", 60)
    lru.hold("b")
    assert lru.reserve("b", 60) is None  # a is in use: b waits rather than exceed the budget
    assert "a" in lru and lru.committed_bytes == 60
    lru.release("a")
    assert lru.reserve("b", 60) == ["a"]


def test_holds_count_requests():
    lru = HostLRU(100)
    lru.hold("a")
    lru.hold("a")
    load(lru, "a", 60)
    lru.release("a")
    assert lru.reserve("b", 60) is None  # one request of a is still in flight
    lru.release("a")
    assert lru.reserve("b", 60) == ["a"]
    with pytest.raises(KeyError):
        lru.release("a")


def test_reads_under_way_count_against_the_budget():
    lru = HostLRU(100)
    assert lru.reserve("a", 60) == []
    assert lru.reserve("b", 60) is None  # a's bytes are not resident yet, but they will be
    lru.loaded("a", 55)  # the real size replaces the estimate
    assert lru.committed_bytes == 55 and lru.reserved_bytes == 0
    lru.cancelled("zzz")  # a failed read that reserved nothing is harmless


def test_a_real_size_over_the_estimate_evicts_idle_adapters_at_once():
    """An adapter padded to one rank holds more than its file: the real size is charged on
    arrival and idle adapters go, coldest first; one in use, and the new one, stay."""
    lru = HostLRU(100)
    load(lru, "a", 30)
    load(lru, "b", 30)
    lru.hold("b")
    assert lru.reserve("c", 10) == []
    assert lru.loaded("c", 80) == ["a"]  # 30 + 30 + 80 = 140: a (idle) goes, b (held) and c stay
    assert lru.peak_bytes == 140  # held until evicted: the peak says so
    lru.evicted("a")
    assert lru.committed_bytes == 110 and lru.keys() == ["b", "c"]
    lru.hold("c")
    assert lru.reserve("d", 10) is None  # over budget with b and c in use: the next read waits
    lru.release("b")
    assert lru.loaded("c", 20) == []  # a real size under the estimate gives room back: 50 of 100
    assert lru.reserve("d", 10) == []


def test_a_failed_read_gives_its_room_back():
    lru = HostLRU(100)
    assert lru.reserve("a", 60) == []
    lru.cancelled("a")
    assert lru.committed_bytes == 0 and lru.reserve("b", 100) == []


def test_one_adapter_larger_than_the_budget_still_loads_alone():
    lru = HostLRU(100)
    assert load(lru, "big", 250) == []
    assert lru.peak_bytes == 250
    lru.hold("big")
    assert lru.reserve("x", 10) is None  # big is in use and over budget
    lru.release("big")
    assert load(lru, "x", 10) == ["big"]


def test_pinned_adapters_stay_and_do_not_block_forever():
    lru = HostLRU(100, pinned={"p"})
    load(lru, "p", 90)
    assert load(lru, "a", 50) == []  # nothing in flight: allowed past the budget rather than never
    assert load(lru, "b", 50) == ["a"]
    assert "p" in lru


def test_a_busy_pinned_adapter_does_not_hold_back_reads():
    # A pinned adapter is never evicted, so waiting for its requests to end frees nothing: a read
    # that waited on them would not start while the pinned adapter has steady traffic.
    lru = HostLRU(100, pinned={"hot"})
    lru.hold("hot@1")
    assert lru.reserve("hot@1", 80) == []
    lru.loaded("hot@1", 80)
    lru.hold("cold@1")
    assert lru.reserve("cold@1", 30) == []  # past the budget by one adapter, as with an idle pin
    lru.loaded("cold@1", 30)
    lru.release("cold@1")
    lru.hold("b@1")
    assert lru.reserve("b@1", 30) == ["cold@1"]  # an unpinned idle adapter still makes room
    lru.evicted("cold@1")
    lru.hold("c@1")
    assert lru.reserve("c@1", 30) is None  # b's read is under way and will free room: wait for it


def test_pin_covers_every_revision_of_an_adapter():
    lru = HostLRU(10, pinned={"acme/bot"})
    load(lru, "acme/bot@1", 50)
    load(lru, "acme/bot@2", 50)
    load(lru, "acme/bottle@1", 50)
    assert load(lru, "x@1", 5) == ["acme/bottle@1"]


def test_owner_decides_what_a_key_belongs_to():
    lru = HostLRU(10, pinned={"acme/bot"}, group_of=lambda key: key.removeprefix("mint:").rsplit("@", 1)[0])
    load(lru, "mint:acme/bot@1", 50)
    assert load(lru, "mint:other@1", 5) == []


def test_reload_replaces_size_and_evicted_forgets():
    lru = HostLRU(100)
    lru.loaded("a", 30)
    lru.loaded("a", 50)
    assert lru.bytes == 50 and len(lru) == 1
    lru.evicted("a")
    lru.evicted("a")  # twice is harmless
    assert lru.bytes == 0 and len(lru) == 0 and lru.evictions_total == 1


def test_double_reservation_is_a_bug():
    lru = HostLRU(100)
    lru.reserve("a", 10)
    with pytest.raises(KeyError):
        lru.reserve("a", 10)


def test_random_lifecycle_keeps_committed_bytes_within_budget_plus_one_adapter():
    """Requests arrive, wait for reads, run and finish in random order; nothing in use is evicted."""
    rng = random.Random(1)
    budget, biggest = 1000, 120
    lru = HostLRU(budget)
    sizes = {f"k{i}": rng.randint(10, biggest) for i in range(200)}
    in_flight: list[str] = []  # one entry per request
    waiting: list[str] = []  # reads not yet allowed
    reading: list[str] = []
    for _ in range(20000):
        event = rng.random()
        if event < 0.35:  # a request arrives
            key = rng.choice(list(sizes))
            lru.hold(key)
            in_flight.append(key)
            if key not in lru and key not in reading and key not in waiting:
                waiting.append(key)
        elif event < 0.6 and waiting:  # the loop offers the oldest waiting read
            key = waiting[0]
            victims = lru.reserve(key, sizes[key])
            if victims is not None:
                waiting.pop(0)
                for victim in victims:
                    assert not lru.in_use(victim)
                    lru.evicted(victim)
                reading.append(key)
        elif event < 0.8 and reading:  # a read finishes
            key = reading.pop(rng.randrange(len(reading)))
            lru.loaded(key, sizes[key])
        elif in_flight:  # a request whose adapter is resident finishes
            ready = [i for i, k in enumerate(in_flight) if k in lru]
            if ready:
                key = in_flight.pop(rng.choice(ready))
                lru.release(key)
        assert lru.committed_bytes <= budget + biggest
        assert lru.bytes == sum(sizes[k] for k in lru.keys())
        assert all(k in lru or k in reading or k in waiting for k in in_flight)
    assert lru.peak_bytes <= budget + biggest


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        HostLRU(0)


def test_a_superseded_revision_goes_before_the_newer_one_is_read():
    """RL publishes a revision every step; the older ones serve only requests pinned to them. An idle
    one leaves before its successor is read, so an adapter's revisions never sum in memory."""
    lru = HostLRU(1000, pinned=["mint:kept/p"])
    for key in ("mint:rl/p@1", "mint:rl/q@1", "mint:kept/p@1"):
        assert lru.reserve(key, 10) == [] and lru.loaded(key, 10) == []
    assert lru.reserve("mint:rl/p@10", 10) == ["mint:rl/p@1"]  # idle: evicted first, though the budget has room
    lru.evicted("mint:rl/p@1")
    assert lru.loaded("mint:rl/p@10", 10) == []
    assert lru.peak_bytes == 30  # never @1 and @10 at once
    lru.hold("mint:rl/p@10")  # a request for the current revision, in flight
    assert lru.reserve("mint:kept/p@2", 10) == []
    assert lru.loaded("mint:kept/p@2", 10) == []  # pinned: every revision stays
    assert lru.reserve("mint:rl/p@11", 10) == []  # @10 is in use: it stays ...
    assert lru.loaded("mint:rl/p@11", 10) == []
    assert lru.keys()[0] != "mint:rl/p@10"
    lru.release("mint:rl/p@10")
    assert lru.keys()[0] == "mint:rl/p@10"  # ... and is the first to go once its request ends
    assert lru.reserve("mint:rl/p@12", 10) == ["mint:rl/p@10", "mint:rl/p@11"]
    assert "mint:rl/q@1" in lru and lru.bytes == 50  # @10 and @11 not evicted yet: the owner carries it out


def test_a_revision_that_became_idle_during_the_read_goes_when_the_newer_one_is_resident():
    lru = HostLRU(1000)
    lru.reserve("mint:rl/p@1", 10)
    lru.loaded("mint:rl/p@1", 10)
    lru.hold("mint:rl/p@1")
    assert lru.reserve("mint:rl/p@2", 10) == []  # in use: stays while @2 is read
    lru.release("mint:rl/p@1")
    assert lru.loaded("mint:rl/p@2", 10) == ["mint:rl/p@1"]


def test_superseded_revisions_do_not_count_twice_toward_room():
    """A read that needs room beyond what the superseded revision frees evicts the coldest other adapter too."""
    lru = HostLRU(30)
    for key in ("mint:cold/a@1", "mint:rl/p@1", "mint:hot/b@1"):
        lru.reserve(key, 10)
        lru.loaded(key, 10)
    assert lru.reserve("mint:rl/p@2", 20) == ["mint:rl/p@1", "mint:cold/a@1"]
