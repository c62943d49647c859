"""The compiled grammars a scheduler keeps, within a byte budget.

SGLang's scheduler compiles a request's ``json_schema``, ``regex``, ``ebnf`` or ``structural_tag`` once
and keeps the result under the request's own text of it, in a dict that only an admin's
``/flush_cache`` empties; a text that fails to compile is kept too, with its error. Every tenant
writes that text, so a client sending a new one per request grew the scheduler's memory for good:
200 requests with a 256 KiB regex that does not parse, answered 400 without a token generated,
grew the scheduler by 105.5 MiB, and as much again per 200 more
(bench/client_state_bench.py).

``GrammarCache`` stands in for that dict: past ``budget_bytes`` it drops the least recently used
entries. An entry weighs its key's text plus what ``value_bytes`` says the value holds (xgrammar's
own measure of a compiled grammar; a failure's message). An entry heavier than the whole budget is
not kept: the next request with that text compiles it again.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from typing import Callable, Hashable


def key_bytes(key) -> int:
    """The memory of a cache key: SGLang's are ``(kind, text)`` tuples of strings."""
    parts = key if isinstance(key, tuple) else (key,)
    return sum(sys.getsizeof(part) for part in parts)


class GrammarCache:
    """A mapping of grammar keys to compiled grammars, least recently used first out past ``budget_bytes``.

    It offers what SGLang's grammar backends call on their ``cache``: ``get``, ``[key] = value``, ``pop``,
    ``clear``, ``in`` and ``len``."""

    def __init__(self, budget_bytes: int, value_bytes: Callable[[object], int] = lambda value: 0):
        if budget_bytes <= 0:
            raise ValueError(f"a grammar cache's budget must be positive, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._value_bytes = value_bytes
        self._entries: OrderedDict[Hashable, tuple[object, int]] = OrderedDict()
        self.bytes = 0
        self.evictions = 0

    def get(self, key, default=None):
        entry = self._entries.get(key)
        if entry is None:
            return default
        self._entries.move_to_end(key)
        return entry[0]

    def __setitem__(self, key, value) -> None:
        self.pop(key)
        size = key_bytes(key) + max(0, int(self._value_bytes(value)))
        if size > self.budget_bytes:
            return
        while self.bytes + size > self.budget_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self.bytes -= dropped
            self.evictions += 1
        self._entries[key] = (value, size)
        self.bytes += size

    def pop(self, key, default=None):
        entry = self._entries.pop(key, None)
        if entry is None:
            return default
        self.bytes -= entry[1]
        return entry[0]

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0

    def __contains__(self, key) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def status(self) -> dict:
        return {"entries": len(self._entries), "bytes": self.bytes, "budget_bytes": self.budget_bytes,
                "evictions": self.evictions}
