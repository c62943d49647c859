"""The ``/v1/responses`` answers a server stores: at most ``--mint-max-stored-responses`` of them, weighing at
most ``--mint-stored-responses-bytes``.

Under ``--enable-response-store`` SGLang keeps each stored answer, and the conversation that led to it
(its ``msg_store``: every message so far, so a long conversation is held once per turn, the messages shared
and the list of them not), in two dicts that nothing ever empties, and it writes the conversation before the
answer is made: a request that then fails (its input too long for the model, say) leaves its messages behind
with no answer to name them. Every tenant adds to both, and one input may be ``--mint-max-request-bytes``.

With ``--enable-mint`` (``limited_stores``) there are two classes, each bounded by the count and the bytes:

- the answers, each with its conversation: past either bound the least recently used go, answer and
  conversation together (naming one afterwards is SGLang's 404 for an unknown response id), never the one
  just made;
- the conversations whose answer is not stored (in flight, or failed): past either bound the oldest go.

A write that weighs more than its class's whole budget by itself goes alone; it does not empty the store,
and an answer whose conversation went so goes too (continuing it was SGLang's KeyError, a 500). A
background answer still being made (``queued``, ``in_progress``, or its task running: SGLang's
``background_tasks``, ``RunningAnswers``) is a request's, bounded by the requests in flight: it and its
conversation are neither counted nor dropped (its task reads it again as it ends) until its task ends. Such
answers are at most ``--mint-max-background-responses`` at once (``RunningAnswers.admit``); one more is a 429.
Bytes are ``weigh``'s: what the objects hold in memory, about, each message counted once in a class however
many of its conversations hold it (``SharedWeights``), so a 100-turn conversation weighs its messages once
and its 100 lists of them.

A request that continues an answer (``previous_response_id``) reads that answer's conversation at its arrival,
and SGLang reads it again once the request's own answer is made, to store the conversation so far. Newer
answers may have evicted it meanwhile (with a count of 1: the request's own), and SGLang's second read then
failed the request (a 500, or a stream cut off). Every read now gives the conversation as the request first
read it (``ConversationStore.history_of``), held for as long as the request is.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import OrderedDict
from functools import partial
from sys import getsizeof
from typing import Callable

# OpenAI's bounds on a request's metadata, which SGLang copies into the stored answer as it came (a 64 MiB body
# of {}s in it weighs 1.5 GiB): pairs, a key's characters, a value's (a string)
METADATA_PAIRS, METADATA_KEY_CHARS, METADATA_VALUE_CHARS = 16, 64, 512

# The states of a stored answer still being made (a background request's): never dropped, or it could not
# be read, cancelled, nor finished by its own task
IN_FLIGHT = frozenset(("queued", "in_progress"))
_LEAVES = frozenset((str, bytes, int, float, bool, type(None)))
_CONTAINERS = (list, tuple, set, frozenset)
# What SharedWeights spends to count one message, and one conversation: its record ([message, weight, count],
# two ints, a dict slot), measured
RECORD_BYTES = 200


def weigh(value, most: float = float("inf")) -> int:
    """The bytes ``value`` holds, about: ``sys.getsizeof`` of it and of every dict key and value, list item
    and pydantic model field under it (a small int, shared by CPython, is counted each time it appears).
    Its time grows with the objects, some 0.2 µs each (a 64 MiB body of ``{}``s, parsed in 1.7 s, weighs past
    1 GiB in 3.4 s); it stops once past ``most`` (then more than ``most``)."""
    total, stack = getsizeof(value), [value]
    while stack and total <= most:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            children = [*item, *item.values()]
        elif kind in _CONTAINERS:
            children = item
        elif kind in _LEAVES:
            continue
        elif hasattr(kind, "__pydantic_fields__"):
            children = [item.__dict__, getattr(item, "__pydantic_extra__", None) or {}]
        else:
            continue
        total += sum(map(getsizeof, children))
        stack.extend(child for child in children if type(child) not in _LEAVES)
    return total


def metadata_problem(metadata) -> str | None:
    """What is past OpenAI's bounds in a stored request's ``metadata``, or None: at most 16 pairs, each key a
    string of at most 64 characters, each value one of at most 512."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict):
        return f"metadata: an object of strings, got {type(metadata).__name__}"
    if len(metadata) > METADATA_PAIRS:
        return f"metadata: at most {METADATA_PAIRS} pairs, got {len(metadata)}"
    for key, value in metadata.items():
        if not isinstance(key, str) or len(key) > METADATA_KEY_CHARS:
            return f"metadata: each key a string of at most {METADATA_KEY_CHARS} characters, got {str(key)[:80]!r}"
        if not isinstance(value, str) or len(value) > METADATA_VALUE_CHARS:
            return (f"metadata: each value a string of at most {METADATA_VALUE_CHARS} characters, got "
                    f"{'one of ' + str(len(value)) if isinstance(value, str) else type(value).__name__} for {key!r}")
    return None


class SharedWeights:
    """The bytes of the conversations (lists of messages) held under some keys, each message weighed once
    however many of them hold it: ``list(conversation)`` shares the messages, so a continuation holds its
    parent's by reference and adds only its own."""

    def __init__(self, most: float = float("inf")):
        self.bytes = 0
        self.most = most  # a message is weighed until past this: it then goes, too heavy to keep
        self._lists: dict[object, tuple[list, int]] = {}  # key -> (its list, the list's own size)
        self._messages: dict[int, list] = {}  # id(message) -> [message, its weight, how many lists hold it]

    def __contains__(self, key) -> bool:
        return key in self._lists

    def hold(self, key, messages: list, weighed: "SharedWeights | None" = None) -> None:
        """``key`` now holds ``messages`` (in place of what it held). A message this or ``weighed`` knows is
        not weighed again."""
        size = getsizeof(messages) + RECORD_BYTES
        self.bytes += size
        for message in messages:
            entry = self._messages.get(id(message))
            if entry is None:
                known = weighed._messages.get(id(message)) if weighed is not None else None
                entry = [message, known[1] if known is not None else weigh(message, self.most) + RECORD_BYTES, 0]
                self._messages[id(message)] = entry
                self.bytes += entry[1]
            entry[2] += 1
        old = self._lists.get(key)
        self._lists[key] = (messages, size)
        if old is not None:  # after the new list is held, so the messages the two share are not weighed again
            self._release(*old)

    def release(self, key) -> None:
        """``key`` holds nothing any more."""
        held = self._lists.pop(key, None)
        if held is not None:
            self._release(*held)

    def _release(self, messages: list, size: int) -> None:
        self.bytes -= size
        for message in messages:
            entry = self._messages[id(message)]
            entry[2] -= 1
            if not entry[2]:
                del self._messages[id(message)]
                self.bytes -= entry[1]

    def alone(self, key) -> int:
        """What ``key``'s conversation would weigh if it were the only one held."""
        messages, size = self._lists[key]
        return size + sum(self._messages[id(message)][1] for message in messages)

    def move(self, key, into: "SharedWeights") -> None:
        """``key``'s conversation is now counted in ``into``, not here."""
        messages, _ = self._lists[key]
        into.hold(key, messages, weighed=self)
        self.release(key)


class StoredResponses:
    """Both classes' bounds, over the two dicts SGLang reads and writes: ``answers`` (its ``response_store``)
    and ``conversations`` (its ``msg_store``). An answer still being made (its status, or its key among
    ``running``: SGLang's background tasks, each until it ends) and its conversation are not counted, nor
    dropped: they are a request's, bounded by the requests in flight. They count once it ends (``settled``)."""

    def __init__(self, limit: int, budget_bytes: int):
        if limit < 1 or budget_bytes < 1:
            raise ValueError(f"a store's limit and budget must be at least 1, got {limit} and {budget_bytes}")
        self.limit, self.budget_bytes = limit, budget_bytes
        self.running = RunningAnswers(self)
        self.answers = AnswerStore(self)
        self.conversations = ConversationStore(self)
        self.answered = SharedWeights(budget_bytes)  # the conversations of stored answers, once made
        self.unanswered = SharedWeights(budget_bytes)  # those of answers not stored (yet)
        self._unanswered_order: OrderedDict = OrderedDict()  # their keys, oldest first
        self._counted: OrderedDict = OrderedDict()  # answers made, least recently used first -> their weight
        self._counted_bytes = 0
        self._refused: OrderedDict = OrderedDict()  # keys not kept, whose answer or conversation may come next
        self.evictions = 0  # answers dropped past a bound
        self.refused = 0  # writes that alone weighed more than their class's budget

    @property
    def answered_bytes(self) -> int:
        return self._counted_bytes + self.answered.bytes

    def in_flight(self, key) -> bool:
        answer = OrderedDict.get(self.answers, key)
        return key in self.running or getattr(answer, "status", None) in IN_FLIGHT

    def answer_written(self, key, answer) -> None:
        self._uncount(key)
        if self.in_flight(key):
            self._trim_answers(newest=None)
        else:
            self.settled(key)
        if key in self.unanswered:  # its conversation, written at its arrival, now goes with the answer
            self.unanswered.release(key)
            self._unanswered_order.pop(key, None)

    def settled(self, key) -> None:
        """``key``'s answer is written, or its background task ended: counted once made, then the bounds."""
        if key not in self.answers or key in self._counted or self.in_flight(key):
            return
        if key in self._refused:  # its conversation was not kept: it could not be continued
            self.refused += 1
            self.drop_answer(key)
            return
        self._counted[key] = weight = weigh(OrderedDict.__getitem__(self.answers, key), most=self.budget_bytes)
        self._counted_bytes += weight
        if key in self.conversations:
            self.answered.hold(key, OrderedDict.__getitem__(self.conversations, key), weighed=self.unanswered)
        self._trim_answers(newest=key)

    def conversation_written(self, key, messages: list) -> None:
        if key in self.answers:
            if key in self._counted:
                self.answered.hold(key, messages, weighed=self.unanswered)
                self._trim_answers(newest=key)
            return
        if key in self._refused:  # the conversation of an answer not kept
            del self._refused[key]
            OrderedDict.pop(self.conversations, key, None)
            return
        self.unanswered.hold(key, messages, weighed=self.answered)
        self._unanswered_order[key] = None
        self._unanswered_order.move_to_end(key)
        if self.unanswered.alone(key) > self.budget_bytes:
            self.refused += 1
            self.drop_conversation(key)
            self._refuse(key)
            return
        while len(self._unanswered_order) > self.limit or self.unanswered.bytes > self.budget_bytes:
            oldest = next(iter(self._unanswered_order))
            if oldest == key:
                break
            self.drop_conversation(oldest)

    def touched(self, key) -> None:
        if key in self._counted:
            self._counted.move_to_end(key)

    def _trim_answers(self, newest) -> None:
        """Past the count or the bytes, the least recently used answers made go, but not ``newest`` (just
        made, or None): it goes alone where it weighs more than the budget by itself."""
        if newest is not None and self._alone(newest) > self.budget_bytes:
            self.refused += 1
            self.drop_answer(newest)
            self._refuse(newest)
            return
        if newest is not None:
            self._counted.move_to_end(newest)
        while len(self.answers) > self.limit or self.answered_bytes > self.budget_bytes:
            victim = next(iter(self._counted), None)
            if victim is None or victim == newest:  # only answers being made besides it: over until one ends
                return
            self.evictions += 1
            self.drop_answer(victim)

    def _refuse(self, key) -> None:
        """``key``'s answer and conversation are not kept, whichever SGLang writes next."""
        self._refused[key] = None
        while len(self._refused) > self.limit:
            self._refused.popitem(last=False)

    def _alone(self, key) -> int:
        conversation = self.answered.alone(key) if key in self.answered else 0
        return self._counted[key] + conversation

    def _uncount(self, key) -> None:
        self._counted_bytes -= self._counted.pop(key, 0)
        self.answered.release(key)

    def drop_answer(self, key) -> None:
        """The answer ``key`` goes, and its conversation with it."""
        OrderedDict.pop(self.answers, key, None)
        self._uncount(key)
        self.drop_conversation(key)

    def drop_conversation(self, key) -> None:
        OrderedDict.pop(self.conversations, key, None)
        self.answered.release(key)
        self.unanswered.release(key)
        self._unanswered_order.pop(key, None)

    def figures(self) -> dict:
        return {"answers": len(self.answers), "conversations": len(self.conversations),
                "answered_bytes": self.answered_bytes, "unanswered_bytes": self.unanswered.bytes,
                "limit": self.limit, "budget_bytes": self.budget_bytes, "evictions": self.evictions,
                "refused": self.refused, "background": len(self.running), "background_limit": self.running.most,
                "background_refused": self.running.refused}


class BackgroundFull(Exception):
    """As many background answers are queued or being made as the server makes at once (a 429)."""

    def __init__(self, most: int):
        super().__init__(f"this server makes at most {most} background answers at once "
                         "(--mint-max-background-responses), and that many are queued or being made: retry once "
                         "one has ended, or send the request without background")


class RunningAnswers(dict):
    """SGLang's ``background_tasks`` (response id -> the task making it), which its task's end empties: the
    store learns there that the answer is made. At most ``most`` at once, with those admitted whose task SGLang
    has not started yet (``admit``): a background request holds no connection while it waits, so without a bound
    one client queued as many as it liked ahead of everyone (2,000 of them made a plain answer wait 26 s)."""

    def __init__(self, bounds: StoredResponses, most: int = 1 << 62):
        super().__init__()
        self.bounds, self.most = bounds, most
        self.admitting = 0  # requests admitted whose task is not started yet, or that SGLang refuses
        self.refused = 0

    def admit(self) -> contextlib.AbstractContextManager:
        """One more background request, held from its arrival until SGLang has started its task or answered
        it otherwise; ``BackgroundFull`` where ``most`` are in flight."""
        if len(self) + self.admitting >= self.most:
            self.refused += 1
            raise BackgroundFull(self.most)
        self.admitting += 1
        return self._admitted()

    @contextlib.contextmanager
    def _admitted(self):
        try:
            yield
        finally:
            self.admitting -= 1

    def pop(self, key, *default):
        task = super().pop(key, *default)
        self.bounds.settled(key)
        return task


class _BoundStore(OrderedDict):
    """One of SGLang's two dicts, whose every removal goes through ``bounds`` (``_drop``), so its bytes follow."""

    def __init__(self, bounds: StoredResponses):
        super().__init__()
        self.bounds = bounds

    def _drop(self, key) -> None:
        raise NotImplementedError

    def __delitem__(self, key) -> None:
        if key not in self:
            raise KeyError(key)
        self._drop(key)

    def pop(self, key, *default):
        if key not in self:
            if default:
                return default[0]
            raise KeyError(key)
        value = OrderedDict.__getitem__(self, key)
        self._drop(key)
        return value

    def popitem(self, last: bool = True):
        key = next(reversed(self)) if last else next(iter(self))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self):
            self._drop(key)


class AnswerStore(_BoundStore):
    """SGLang's ``response_store``: a write or a ``get`` counts as use."""

    def __setitem__(self, key, answer) -> None:
        super().__setitem__(key, answer)
        self.move_to_end(key)
        self.bounds.answer_written(key, answer)

    def _drop(self, key) -> None:
        self.bounds.drop_answer(key)

    def get(self, key, default=None):
        if key not in self:
            return default
        self.move_to_end(key)
        self.bounds.touched(key)
        return self[key]

    @property
    def evictions(self) -> int:
        return self.bounds.evictions


class ConversationStore(_BoundStore):
    """SGLang's ``msg_store``; and the conversation each request continues from, as it first read it."""

    def __init__(self, bounds: StoredResponses):
        super().__init__(bounds)
        self._first_read: dict[int, tuple[weakref.ref, list]] = {}  # id(request) -> (request, its history)

    def __setitem__(self, key, messages) -> None:
        super().__setitem__(key, messages)
        self.bounds.conversation_written(key, messages)

    def _drop(self, key) -> None:
        self.bounds.drop_conversation(key)

    def history_of(self, request, read: Callable[[], list]) -> list:
        """``read()`` (the answer ``request`` continues, and its input) as it gave it the first time for this
        request: the answer may be evicted before the request's own answer is stored."""
        held = self._first_read.get(id(request))
        if held is None or held[0]() is not request:
            held = (weakref.ref(request, partial(self._forget, id(request))), read())
            self._first_read[id(request)] = held
        return list(held[1])

    def _forget(self, key: int, ref: weakref.ref) -> None:
        """A request ended (``ref`` died): its history goes, unless a later request of the same id holds it."""
        if self._first_read.get(key, (None,))[0] is ref:
            del self._first_read[key]


def limited_stores(limit: int, budget_bytes: int, most_background: int = 1 << 62) -> StoredResponses:
    """The stores for SGLang's ``response_store`` (``.answers``), ``msg_store`` (``.conversations``) and
    ``background_tasks`` (``.running``, at most ``most_background`` at once), bound as the module says."""
    stores = StoredResponses(limit, budget_bytes)
    stores.running.most = most_background
    return stores
