"""The ``/v1/responses`` answers a server stores, at most ``--mint-max-stored-responses`` of them.

Under ``--enable-response-store`` SGLang keeps each stored answer, and the conversation that led to it
(its ``msg_store``: every message so far, so a long conversation is kept once per turn), in two dicts
that nothing ever empties, and it writes the conversation before the answer is made: a request that
then fails (its input too long for the model, say) leaves its messages behind with no answer to name
them. Every tenant adds to both. With ``--enable-mint`` (``limited_stores``) at most the limit of answers
is kept, the least recently used going first and its conversation with it (naming it afterwards is
SGLang's 404 for an unknown response id); a kept answer's conversation is always kept, so it can be
continued; and of the conversations whose answer is not stored (in flight, or failed) at most the
limit more are kept, the oldest going first. A background answer still being made (``queued``,
``in_progress``) is never dropped.

A request that continues an answer (``previous_response_id``) reads that answer's conversation at its
arrival, and SGLang reads it again once the request's own answer is made, to store the conversation so
far. If ``limit`` newer answers were stored meanwhile (with a limit of 1: its own), the answer it continues
is gone by then, and SGLang's second read failed the request (a 500, or a stream cut off). It now reads
the conversation the request stored at its arrival, which is the same (``history_at_arrival``). Only a
request that outlives ``limit`` newer requests still in flight or failed loses that too, and fails.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable


class LimitedStore(OrderedDict):
    """A dict of at most ``limit`` entries: a new one past it drops the least recently used (``get`` and a
    write count as use) whose value ``keep`` does not hold on to (past the limit while every entry is kept);
    ``on_store(key)`` is told of each write and ``on_evict(key)`` of each dropped key."""

    def __init__(self, limit: int, keep: Callable[[object], bool] = lambda value: False,
                 on_store: Callable[[object], None] = lambda key: None,
                 on_evict: Callable[[object], None] = lambda key: None):
        if limit < 1:
            raise ValueError(f"a store's limit must be at least 1, got {limit}")
        super().__init__()
        self.limit = limit
        self.keep = keep
        self.on_store = on_store
        self.on_evict = on_evict
        self.evictions = 0

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        self.on_store(key)
        while len(self) > self.limit:
            dropped = next((k for k, v in self.items() if not self.keep(v)), None)
            if dropped is None:
                return
            del self[dropped]
            self.evictions += 1
            self.on_evict(dropped)

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        return self[key]


class Conversations(OrderedDict):
    """The conversations of stored answers: one goes only with its answer, so an answer kept can always be
    continued; those written before their answer (in flight, or failed) are at most ``limit``, the oldest
    dropped first."""

    def __init__(self, limit: int, is_answered: Callable[[object], bool]):
        super().__init__()
        self.limit = limit
        self.is_answered = is_answered
        self._unanswered: OrderedDict = OrderedDict()

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if not self.is_answered(key):
            self._unanswered[key] = None
            self._unanswered.move_to_end(key)
        while len(self._unanswered) > self.limit:
            dropped, _ = self._unanswered.popitem(last=False)
            super().pop(dropped, None)

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
        super().pop(key, None)


# The states of a stored answer still being made (a background request's): never dropped, or it could not
# be read, cancelled, nor finished by its own task
IN_FLIGHT = frozenset(("queued", "in_progress"))


def limited_stores(limit: int) -> tuple[LimitedStore, Conversations]:
    """``(answers, conversations)``, at most ``limit`` answers each with its conversation, besides answers
    still being made, and at most ``limit`` conversations more whose answer is not (yet) stored."""
    answers = LimitedStore(limit, keep=lambda answer: getattr(answer, "status", None) in IN_FLIGHT)
    conversations = Conversations(limit, is_answered=answers.__contains__)
    answers.on_store, answers.on_evict = conversations.answered, conversations.drop
    return answers, conversations
