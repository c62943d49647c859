"""GrammarCache: SGLang's compiled grammars within a byte budget, least recently used first out (grammar_cache.py)."""

from __future__ import annotations

import pytest

from sglang_mint.grammar_cache import GrammarCache, key_bytes

KEY_BYTES = key_bytes(("regex", "k0"))  # every key below has the same size


def cache_of(entries: int, value_bytes: int = 100) -> GrammarCache:
    return GrammarCache(entries * (KEY_BYTES + value_bytes), value_bytes=lambda value: value_bytes)


def test_past_the_budget_the_least_recently_used_go_first():
    cache = cache_of(3)
    for i in range(3):
        cache[("regex", f"k{i}")] = f"g{i}"
    assert cache.get(("regex", "k0")) == "g0"  # k0 used: k1 is now the oldest
    cache[("regex", "k3")] = "g3"
    assert ("regex", "k1") not in cache and cache.get(("regex", "k1")) is None
    assert [cache.get(("regex", f"k{i}")) for i in (0, 2, 3)] == ["g0", "g2", "g3"]
    assert cache.status() == {"entries": 3, "bytes": 3 * (KEY_BYTES + 100), "budget_bytes": cache.budget_bytes,
                              "evictions": 1}


def test_a_key_s_text_counts_whatever_its_value_weighs():
    cache = GrammarCache(10_000, value_bytes=lambda value: 0)
    cache[("regex", "x" * 6_000)] = "failed"
    cache[("regex", "y" * 6_000)] = "failed"  # 12 KB of keys: the first goes
    assert len(cache) == 1 and ("regex", "y" * 6_000) in cache and cache.bytes <= 10_000


def test_an_entry_heavier_than_the_budget_is_not_kept_and_drops_nothing():
    cache = cache_of(2)
    cache[("regex", "k0")] = "g0"
    cache[("regex", "k9")] = "g9"
    cache._value_bytes = lambda value: 10**9 if value == "heavy" else 100
    cache[("regex", "k1")] = "heavy"
    assert ("regex", "k1") not in cache and len(cache) == 2 and cache.evictions == 0


def test_replacing_pop_and_clear_keep_the_count_of_bytes():
    cache = cache_of(3)
    cache[("regex", "k0")] = "g0"
    cache[("regex", "k0")] = "g0 again"
    assert len(cache) == 1 and cache.bytes == KEY_BYTES + 100 and cache.get(("regex", "k0")) == "g0 again"
    assert cache.pop(("regex", "k0")) == "g0 again" and cache.bytes == 0
    assert cache.pop(("regex", "k0"), "none") == "none"
    cache[("regex", "k1")] = "g1"
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0


def test_a_budget_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        GrammarCache(0)
