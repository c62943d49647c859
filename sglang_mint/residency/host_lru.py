"""A host-memory LRU over adapters, bounded in bytes, that never drops what is in use.

The policy only decides; its owner carries out what it returns. It hears
four kinds of events and answers one question:

- ``hold(key)`` / ``release(key)``: a request for ``key`` started / ended.
  Counts, so an adapter with any request in flight is never evicted.
- ``reserve(key, estimate)``: may a read of about ``estimate`` bytes start
  now? Returns the idle adapters to evict first (coldest first), or None:
  the read waits until a release or another eviction makes room. Bytes of
  reads under way count against the budget like resident ones, so host
  memory does not grow past the budget while reads pile up.
- ``loaded(key, nbytes)`` / ``cancelled(key)``: a reserved read finished
  (its reservation becomes ``nbytes`` resident, its real size, which may differ
  from the estimate: if it took the total over the budget, idle adapters to
  evict come back) or failed.
- ``touched(key)`` / ``evicted(key)``: a hit, and an eviction carried out.

A revision superseded by a newer one of the same adapter (``acme/bot@3`` once
``acme/bot@4`` is read) goes first: ``reserve`` for the newer one returns the
idle older ones to evict before the read, ``loaded`` those that became idle
while it read, and one still in use goes to the cold end when its last request
ends. Requests for the bare id resolve to the newest revision, so the older
ones serve only requests pinned to them (which read them again); an RL loop
publishing every step would otherwise fill the budget with policies nobody
samples any more, and hold two revisions of each policy while it reads the next.

Example, budget 100::

    lru.hold("a"); lru.reserve("a", 60)   # -> []          (fits)
    lru.loaded("a", 60)
    lru.hold("b"); lru.reserve("b", 60)   # -> None        ("a" is in use: b waits)
    lru.release("a"); lru.reserve("b", 60)  # -> ["a"]     (evict a, then read b)
    lru.evicted("a")

Every event is O(1); ``reserve`` walks from the cold end past held and
pinned adapters only. Committed bytes (resident + reserved) exceed the
budget only when one adapter alone does not fit (a read is always allowed
when no other read is under way and nothing resident is in use), so the
peak is at most the budget plus one adapter, plus pinned adapters.
"""

from __future__ import annotations

import itertools

from collections import OrderedDict
from collections.abc import Callable, Iterable


def adapter_of(key: str) -> str:
    """``"acme/bot@3"`` -> ``"acme/bot"``: pins hold every revision of an adapter."""
    return key.rpartition("@")[0] or key


def _revision_of(key: str) -> tuple[str, int | None]:
    """``"mint:acme/bot@3"`` -> ``("mint:acme/bot", 3)``; a key without a revision number (an adapter
    the engine loaded itself, the capacity simulator's integers) -> (key, None)."""
    if not isinstance(key, str):
        return key, None
    group, _, number = key.rpartition("@")
    return (group, int(number)) if group and number.isdigit() else (key, None)


class HostLRU:
    def __init__(self, budget_bytes: int, pinned: Iterable[str] = (), group_of: Callable[[str], str] = adapter_of):
        if budget_bytes <= 0:
            raise ValueError(f"host cache budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.pinned = frozenset(pinned)
        self._group_of = group_of
        self._sizes: OrderedDict[str, int] = OrderedDict()  # resident, cold first, hot last
        self._revisions: dict[str, dict[str, int]] = {}  # adapter -> {resident key: revision number}
        self._holds: dict[str, int] = {}  # requests in flight per key (resident or not)
        self._reserved: dict[str, int] = {}  # reads under way: estimated bytes
        self.bytes = 0  # resident
        self.reserved_bytes = 0
        self.held_resident_bytes = 0
        self.held_unpinned_bytes = 0  # the part of held_resident_bytes an eviction may free some day
        self.peak_bytes = 0  # highest resident + reserved seen
        self.evictions_total = 0

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    @property
    def committed_bytes(self) -> int:
        return self.bytes + self.reserved_bytes

    @property
    def held(self) -> int:
        """Keys with a request in flight."""
        return len(self._holds)

    # -- request lifecycle ---------------------------------------------------
    def hold(self, key: str) -> None:
        n = self._holds.get(key, 0)
        self._holds[key] = n + 1
        if n == 0 and key in self._sizes:
            self._count_held(key, self._sizes[key])

    def release(self, key: str) -> None:
        n = self._holds.get(key, 0)
        if n <= 0:
            raise KeyError(f"release of {key!r}, which has no request in flight")
        if n == 1:
            del self._holds[key]
            if key in self._sizes:
                self._count_held(key, -self._sizes[key])
                if self._newer_resident(key):
                    self._sizes.move_to_end(key, last=False)  # superseded: the first to go
        else:
            self._holds[key] = n - 1

    def in_use(self, key: str) -> bool:
        return key in self._holds

    # -- reads -----------------------------------------------------------------
    def reserve(self, key: str, estimate: int) -> list[str] | None:
        """Room for a read of ``key``: idle adapters to evict first, or None to wait."""
        if key in self._reserved:
            raise KeyError(f"{key!r} already has a read under way")
        superseded = self._idle_older(key)
        over = self.committed_bytes + estimate - self.budget_bytes - sum(self._sizes[k] for k in superseded)
        victims = superseded + self._over_budget(over, skip=superseded)
        over -= sum(self._sizes[v] for v in victims[len(superseded):])
        if over > 0 and (self.reserved_bytes or self.held_unpinned_bytes):
            return None  # wait: something in flight will free room (a pinned adapter never will)
        self._reserved[key] = estimate
        self.reserved_bytes += estimate
        self._note_peak(self.committed_bytes - sum(self._sizes[v] for v in victims))
        return victims

    def loaded(self, key: str, nbytes: int) -> list[str]:
        """``key`` is resident with ``nbytes``, its real size: the reservation, if any, ends.

        Returns the idle adapters to evict (coldest first) when the real size took the
        committed bytes over the budget; ``key`` itself is hottest and goes last."""
        self.reserved_bytes -= self._reserved.pop(key, 0)
        if key in self._sizes:
            self._forget(key)
        self._sizes[key] = nbytes
        self.bytes += nbytes
        group, number = _revision_of(key)
        if number is not None:
            self._revisions.setdefault(group, {})[key] = number
        if key in self._holds:
            self._count_held(key, nbytes)
        self._note_peak(self.committed_bytes)
        superseded = self._idle_older(key)
        over = self.committed_bytes - self.budget_bytes - sum(self._sizes[k] for k in superseded)
        return superseded + self._over_budget(over, skip=[key, *superseded])

    def _idle_older(self, key: str) -> list[str]:
        """Resident revisions of ``key``'s adapter older than ``key``, with no request in flight, not pinned."""
        group, number = _revision_of(key)
        if number is None:
            return []
        return [k for k, n in self._revisions.get(group, {}).items()
                if n < number and k not in self._holds and not self.is_pinned(k)]

    def _newer_resident(self, key: str) -> bool:
        group, number = _revision_of(key)
        return number is not None and any(n > number for n in self._revisions.get(group, {}).values())

    def _over_budget(self, over: int, skip: list[str] = ()) -> list[str]:
        """Idle adapters but ``skip``, coldest first, whose bytes cover ``over`` (all of them if they cannot)."""
        victims: list[str] = []
        for victim, nbytes in self._sizes.items():
            if over <= 0:
                break
            if victim in self._holds or victim in skip or self.is_pinned(victim):
                continue
            victims.append(victim)
            over -= nbytes
        return victims

    def cancelled(self, key: str) -> None:
        """The read of ``key`` failed: its reservation ends."""
        self.reserved_bytes -= self._reserved.pop(key, 0)

    def touched(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def evicted(self, key: str) -> None:
        if key in self._sizes:
            self._forget(key)
            self.evictions_total += 1

    def _forget(self, key: str) -> None:
        group, number = _revision_of(key)
        if number is not None:
            revisions = self._revisions[group]
            del revisions[key]
            if not revisions:
                del self._revisions[group]
        nbytes = self._sizes.pop(key)
        self.bytes -= nbytes
        if key in self._holds:
            self._count_held(key, -nbytes)

    def _count_held(self, key: str, nbytes: int) -> None:
        self.held_resident_bytes += nbytes
        if not self.is_pinned(key):
            self.held_unpinned_bytes += nbytes

    def _note_peak(self, nbytes: int) -> None:
        if nbytes > self.peak_bytes:
            self.peak_bytes = nbytes

    def is_pinned(self, key: str) -> bool:
        return key in self.pinned or self._group_of(key) in self.pinned

    def keys(self) -> list[str]:
        return list(self._sizes)

    def most_recent(self, n: int) -> list[str]:
        """Up to ``n`` resident keys, the most recently used first."""
        return list(itertools.islice(reversed(self._sizes), n))
