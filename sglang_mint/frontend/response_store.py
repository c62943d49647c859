"""The ``/v1/responses`` answers a server stores: at most ``--mint-max-stored-responses`` of them, weighing at
most ``--mint-stored-responses-bytes`` together with their conversations.

Under ``--enable-response-store`` SGLang keeps each stored answer, and the conversation that led to it
(its ``msg_store``: every message so far, so a long conversation is kept once per turn), in two dicts
that nothing ever empties, and it writes the conversation before the answer is made: a request that
then fails (its input too long for the model, say) leaves its messages behind with no answer to name
them. Every tenant adds to both. With ``--enable-mint`` (``limited_stores``) at most the limit of answers
is kept, the least recently used going first and its conversation with it (naming it afterwards is
SGLang's 404 for an unknown response id); a kept answer's conversation is always kept, so it can be
continued; and of the conversations whose answer is not stored (in flight, or failed) at most the
limit more are kept, the oldest going first. A background answer still being made (``queued``,
``in_progress``) is never dropped. Past the bytes (each entry weighed by ``weigh``, about its text), the
conversations whose answer is not stored go first, oldest first, then the least recently used answers:
a count alone bounded no bytes, and each of the conversations kept may be an input of up to
``--mint-max-request-bytes``, too long for the model.

A request that continues an answer (``previous_response_id``) reads that answer's conversation at its
arrival, and SGLang reads it again once the request's own answer is made, to store the conversation so
far. If ``limit`` newer answers were stored meanwhile (with a limit of 1: its own), the answer it continues
is gone by then, and SGLang's second read failed the request (a 500, or a stream cut off). It now reads
the conversation the request stored at its arrival, which is the same (``history_at_arrival``). Only a
request that outlives ``limit`` newer requests still in flight or failed (or their bytes) loses that too,
and fails.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable

UNBOUNDED = float("inf")
_DEEPEST = 12  # levels of nesting weighed: a stored answer's text sits some 5 deep


def weigh(value, depth: int = 0) -> int:
    """About the bytes ``value`` keeps: its text (str, bytes) and 16 for each number, container or object,
    through dicts, lists, tuples and objects' attributes (pydantic models), ``_DEEPEST`` levels deep."""
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if depth >= _DEEPEST:
        return 16
    if isinstance(value, dict):
        return 16 + sum(weigh(k, depth + 1) + weigh(v, depth + 1) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return 16 + sum(weigh(v, depth + 1) for v in value)
    attributes = getattr(value, "__dict__", None)
    return 16 + (sum(weigh(v, depth + 1) for v in attributes.values()) if attributes else 0)


class StoreBytes:
    """The bytes stored entries weigh together (``used``), within ``limit``."""

    def __init__(self, limit: float = UNBOUNDED):
        self.limit = limit
        self.used = 0

    def over(self) -> bool:
        return self.used > self.limit


class LimitedStore(OrderedDict):
    """A dict of at most ``limit`` entries: a new one past it drops the least recently used (``get`` and a
    write count as use) whose value ``keep`` does not hold on to (past the limit while every entry is kept);
    ``on_store(key)`` is told of each write and ``on_evict(key)`` of each dropped key. Each value is weighed
    into ``weights`` (a StoreBytes); ``trim()``, called after each write, keeps that within its limit."""

    def __init__(self, limit: int, keep: Callable[[object], bool] = lambda value: False,
                 on_store: Callable[[object], None] = lambda key: None,
                 on_evict: Callable[[object], None] = lambda key: None,
                 weights: StoreBytes | None = None, trim: Callable[[], None] = lambda: None):
        if limit < 1:
            raise ValueError(f"a store's limit must be at least 1, got {limit}")
        super().__init__()
        self.limit = limit
        self.keep = keep
        self.on_store = on_store
        self.on_evict = on_evict
        self.weights = weights or StoreBytes()
        self.trim = trim
        self.evictions = 0
        self._weight: dict = {}

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        weight = weigh(value)
        self.weights.used += weight - self._weight.get(key, 0)
        self._weight[key] = weight
        self.on_store(key)
        while len(self) > self.limit and self.evict_one():
            pass
        self.trim()

    def evict_one(self) -> bool:
        """Drop the least recently used entry ``keep`` does not hold on to; False where there is none."""
        dropped = next((k for k, v in self.items() if not self.keep(v)), None)
        if dropped is None:
            return False
        del self[dropped]
        self.weights.used -= self._weight.pop(dropped, 0)
        self.evictions += 1
        self.on_evict(dropped)
        return True

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]


class Conversations(OrderedDict):
    """The conversations of stored answers: one goes only with its answer, so an answer kept can always be
    continued; those written before their answer (in flight, or failed) are at most ``limit``, the oldest
    dropped first. Each is weighed into ``weights``, and ``trim()`` is called after each write."""

    def __init__(self, limit: int, is_answered: Callable[[object], bool], weights: StoreBytes | None = None,
                 trim: Callable[[], None] = lambda: None):
        super().__init__()
        self.limit = limit
        self.is_answered = is_answered
        self.weights = weights or StoreBytes()
        self.trim = trim
        self._unanswered: OrderedDict = OrderedDict()
        self._weight: dict = {}

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        weight = weigh(value)
        self.weights.used += weight - self._weight.get(key, 0)
        self._weight[key] = weight
        if not self.is_answered(key):
            self._unanswered[key] = None
            self._unanswered.move_to_end(key)
        while len(self._unanswered) > self.limit:
            self.drop_oldest_unanswered()
        self.trim()

    def drop_oldest_unanswered(self) -> bool:
        """Drop the oldest conversation whose answer is not stored; False where there is none."""
        if not self._unanswered:
            return False
        dropped, _ = self._unanswered.popitem(last=False)
        self._forget(dropped)
        return True

    def answered(self, key) -> None:
        """``key``'s answer is stored: its conversation now goes only with it."""
        self._unanswered.pop(key, None)

    def history_at_arrival(self, request_id, previous_id):
        """The conversation request ``request_id`` stored at its arrival, where the answer it continues
        (``previous_id``) is gone since: that answer's conversation then, and the request's input. None where
        the answer is still kept, or the request stored none."""
        if previous_id is None or previous_id in self or request_id not in self:
            return None
        return list(self[request_id])

    def drop(self, key) -> None:
        """``key``'s answer was dropped: its conversation goes too."""
        self._unanswered.pop(key, None)
        self._forget(key)

    def _forget(self, key) -> None:
        super().pop(key, None)
        self.weights.used -= self._weight.pop(key, 0)


# The states of a stored answer still being made (a background request's): never dropped, or it could not
# be read, cancelled, nor finished by its own task
IN_FLIGHT = frozenset(("queued", "in_progress"))


def limited_stores(limit: int, max_bytes: float = UNBOUNDED) -> tuple[LimitedStore, Conversations]:
    """``(answers, conversations)``, at most ``limit`` answers each with its conversation, besides answers
    still being made, and at most ``limit`` conversations more whose answer is not (yet) stored; all of them
    weighing at most ``max_bytes``, past which the conversations without an answer go first, then answers."""
    weights = StoreBytes(max_bytes)
    answers = LimitedStore(limit, keep=lambda answer: getattr(answer, "status", None) in IN_FLIGHT,
                           weights=weights)
    conversations = Conversations(limit, is_answered=answers.__contains__, weights=weights)
    answers.on_store, answers.on_evict = conversations.answered, conversations.drop

    def trim() -> None:
        while weights.over() and (conversations.drop_oldest_unanswered() or answers.evict_one()):
            pass

    answers.trim = conversations.trim = trim
    return answers, conversations
