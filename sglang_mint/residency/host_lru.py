"""A host-memory LRU over adapters, bounded in bytes.

The policy only decides; its owner carries out the evictions it returns.
Every operation is O(1) except ``evictions``, which walks from the cold end
and stops at the first adapter it can evict each time:

    lru = HostLRU(budget_bytes=100, pinned={"hot"})
    lru.loaded("a", 60); lru.loaded("b", 60)     # 120 bytes resident
    lru.evictions(in_use={"b"})                   # -> ["a"]  (b is in use)
    lru.evicted("a")

An adapter is never evicted while pinned or in use, so the budget can be
exceeded by what is in use; with nothing in use it is exceeded by at most
the adapter loaded last.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable


def adapter_of(key: str) -> str:
    """``"acme/bot@3"`` -> ``"acme/bot"``: pins hold every revision of an adapter."""
    return key.rsplit("@", 1)[0]


class HostLRU:
    def __init__(self, budget_bytes: int, pinned: Iterable[str] = (), group_of: Callable[[str], str] = adapter_of):
        if budget_bytes <= 0:
            raise ValueError(f"host cache budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.pinned = frozenset(pinned)
        self._group_of = group_of
        self._sizes: OrderedDict[str, int] = OrderedDict()  # cold first, hot last
        self.bytes = 0
        self.evictions_total = 0

    def __contains__(self, key: str) -> bool:
        return key in self._sizes

    def __len__(self) -> int:
        return len(self._sizes)

    def loaded(self, key: str, nbytes: int) -> None:
        if key in self._sizes:
            self.bytes -= self._sizes[key]
        self._sizes[key] = nbytes
        self._sizes.move_to_end(key)
        self.bytes += nbytes

    def touched(self, key: str) -> None:
        if key in self._sizes:
            self._sizes.move_to_end(key)

    def evicted(self, key: str) -> None:
        nbytes = self._sizes.pop(key, None)
        if nbytes is not None:
            self.bytes -= nbytes
            self.evictions_total += 1

    def evictions(self, in_use: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Adapters to evict, coldest first, until the budget holds (or nothing more can go)."""
        over = self.bytes - self.budget_bytes
        victims = []
        if over <= 0:
            return victims
        for key, nbytes in self._sizes.items():
            if key in in_use or self._is_pinned(key):
                continue
            victims.append(key)
            over -= nbytes
            if over <= 0:
                break
        return victims

    def _is_pinned(self, key: str) -> bool:
        return key in self.pinned or self._group_of(key) in self.pinned

    def keys(self) -> list[str]:
        return list(self._sizes)
