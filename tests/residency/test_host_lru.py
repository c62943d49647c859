import random

import pytest

from sglang_mint.residency import HostLRU


def test_evicts_coldest_first_until_within_budget():
    lru = HostLRU(100)
    for key in "abc":
        lru.loaded(key, 40)
    assert lru.bytes == 120
    assert lru.evictions() == ["a"]
    lru.touched("a")  # now b is the coldest
    assert lru.evictions() == ["b"]


def test_never_evicts_in_use_or_pinned():
    lru = HostLRU(100, pinned={"p"})
    lru.loaded("p", 60)
    lru.loaded("u", 60)
    lru.loaded("x", 60)
    assert lru.evictions(in_use={"u"}) == ["x"]
    assert lru.evictions(in_use={"u", "x"}) == []  # over budget, but nothing may go


def test_pin_covers_every_revision_of_an_adapter():
    lru = HostLRU(10, pinned={"acme/bot"})
    lru.loaded("acme/bot@1", 50)
    lru.loaded("acme/bot@2", 50)
    lru.loaded("acme/bottle@1", 50)
    assert lru.evictions() == ["acme/bottle@1"]


def test_owner_decides_what_a_key_belongs_to():
    lru = HostLRU(10, pinned={"acme/bot"}, group_of=lambda key: key.removeprefix("mint:").rsplit("@", 1)[0])
    lru.loaded("mint:acme/bot@1", 50)
    assert lru.evictions() == []


def test_reload_replaces_size_and_evicted_forgets():
    lru = HostLRU(100)
    lru.loaded("a", 30)
    lru.loaded("a", 50)
    assert lru.bytes == 50 and len(lru) == 1
    lru.evicted("a")
    lru.evicted("a")  # twice is harmless
    assert lru.bytes == 0 and len(lru) == 0 and lru.evictions_total == 1


def test_random_workload_keeps_budget_within_one_adapter():
    rng = random.Random(1)
    lru = HostLRU(1000)
    sizes = {}
    for step in range(5000):
        key = f"k{rng.randrange(200)}"
        if key in lru:
            lru.touched(key)
        else:
            sizes[key] = rng.randint(10, 120)
            lru.loaded(key, sizes[key])
            for victim in lru.evictions():
                lru.evicted(victim)
        assert lru.bytes <= 1000 + 120
        assert lru.bytes == sum(sizes[k] for k in lru.keys())


def test_budget_must_be_positive():
    with pytest.raises(ValueError):
        HostLRU(0)
