"""SGLang's stored /v1/responses answers and their conversations, within a count and a byte budget
(frontend/response_store.py). A real server: tests/sglang/test_stored_responses.py."""

from __future__ import annotations

import gc
import tracemalloc
from types import SimpleNamespace

import pytest

from pydantic import BaseModel

from sglang_mint.frontend import response_store
from sglang_mint.frontend.response_store import BackgroundFull, SharedWeights, weigh

ROOMY = 1 << 30  # a budget no test here reaches unless it means to


def limited_stores(limit: int, budget_bytes: int):
    """``(answers, conversations)``, as SGLang's ``response_store`` and ``msg_store`` become."""
    stores = response_store.limited_stores(limit, budget_bytes)
    return stores.answers, stores.conversations


class Request:
    """What ``history_of`` reads of SGLang's ResponsesRequest (a pydantic model, which a weakref can name)."""

    def __init__(self, request_id: str, previous_response_id: str):
        self.request_id, self.previous_response_id = request_id, previous_response_id


def store(answers, conversations, key: str, text: str | None = None) -> None:
    """As SGLang stores a request's answer: its conversation as it starts, then the answer, then the
    conversation with the answer's output."""
    question = {"role": "user", "content": text or key}
    conversations[key] = [question]
    answers[key] = f"answer {key}"
    conversations[key] = [question, {"role": "assistant", "content": "..."}]


def test_past_the_limit_the_least_recently_used_answer_goes_with_its_conversation():
    answers, conversations = limited_stores(2, ROOMY)
    for key in ("resp_a", "resp_b"):
        store(answers, conversations, key)
    assert answers.get("resp_a") == "answer resp_a"  # read: resp_b is now the oldest
    store(answers, conversations, "resp_c")
    assert "resp_b" not in answers and "resp_b" not in conversations
    assert set(answers) == {"resp_a", "resp_c"} and set(conversations) == {"resp_a", "resp_c"}
    assert answers.evictions == 1


def test_a_kept_answer_keeps_its_conversation_whatever_else_is_written():
    answers, conversations = limited_stores(2, ROOMY)
    store(answers, conversations, "resp_a")
    for n in range(10):  # requests that start and fail: conversations with no answer
        conversations[f"resp_failed_{n}"] = [{"role": "user", "content": "x" * 1000}]
    assert "resp_a" in answers and "resp_a" in conversations
    assert set(conversations) == {"resp_a", "resp_failed_8", "resp_failed_9"}  # two unanswered at most


def test_a_conversation_whose_answer_never_came_is_dropped_in_its_turn():
    answers, conversations = limited_stores(2, ROOMY)
    conversations["resp_failed"] = [{"role": "user", "content": "x" * 1000}]  # the request then failed
    for key in ("resp_a", "resp_b", "resp_c"):
        conversations[key] = []  # in flight
    assert "resp_failed" not in conversations and len(conversations) == 2
    answers["resp_b"] = "answer resp_b"
    conversations["resp_d"] = []
    assert set(conversations) == {"resp_b", "resp_c", "resp_d"}  # resp_b answered: kept beside two in flight


def test_a_write_counts_as_use_and_a_missing_key_is_the_default():
    answers, _ = limited_stores(2, ROOMY)
    answers["a"], answers["b"] = 1, 2
    answers["a"] = 3
    answers["c"] = 4
    assert dict(answers) == {"a": 3, "c": 4}
    assert answers.get("b", "gone") == "gone"
    with pytest.raises(KeyError):
        answers["b"]


def test_a_limit_and_a_budget_must_be_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        limited_stores(0, ROOMY)
    with pytest.raises(ValueError, match="at least 1"):
        limited_stores(2, 0)


def test_an_answer_still_being_made_is_never_dropped_nor_the_one_just_written():
    answers, _ = limited_stores(2, ROOMY)
    answers["resp_bg"] = SimpleNamespace(status="queued")  # a background request's, oldest
    answers["resp_a"] = SimpleNamespace(status="completed")
    answers["resp_b"] = SimpleNamespace(status="completed")
    assert set(answers) == {"resp_bg", "resp_b"}  # resp_a, the oldest it could drop
    answers["resp_bg"] = SimpleNamespace(status="in_progress")
    answers["resp_c"] = SimpleNamespace(status="in_progress")
    assert set(answers) == {"resp_bg", "resp_c"}
    answers["resp_d"] = SimpleNamespace(status="queued")  # all three being made: over the limit until one ends
    assert set(answers) == {"resp_bg", "resp_c", "resp_d"}
    answers["resp_bg"] = SimpleNamespace(status="completed")  # just made: its caller has yet to read it
    assert set(answers) == {"resp_bg", "resp_c", "resp_d"}
    answers["resp_c"] = SimpleNamespace(status="completed")
    assert set(answers) == {"resp_c", "resp_d"}  # resp_bg, done, was the oldest it could drop


def test_past_the_bytes_the_least_recently_used_answers_go_though_the_count_allows_them():
    answers, conversations = limited_stores(100, 300_000)
    for key in ("resp_a", "resp_b", "resp_c"):
        store(answers, conversations, key, text=key + "x" * 100_000)
    assert set(answers) == {"resp_b", "resp_c"} and set(conversations) == {"resp_b", "resp_c"}
    assert answers.evictions == 1
    bounds = answers.bounds
    assert 200_000 < bounds.answered_bytes <= 300_000
    store(answers, conversations, "resp_d")  # a small one fits beside them
    assert set(answers) == {"resp_b", "resp_c", "resp_d"}


def test_an_answer_over_the_whole_budget_alone_is_not_kept_and_the_others_stay():
    answers, conversations = limited_stores(100, 300_000)
    store(answers, conversations, "resp_a")
    store(answers, conversations, "resp_huge", text="x" * 400_000)
    assert set(answers) == {"resp_a"} and set(conversations) == {"resp_a"}
    assert answers.bounds.refused == 2 and answers.evictions == 0  # its conversation at arrival, then answered
    answers["resp_huge_answer"] = "y" * 400_000  # the answer itself over it
    assert set(answers) == {"resp_a"}


def test_past_the_bytes_the_oldest_unanswered_conversations_go_and_one_over_it_goes_alone():
    answers, conversations = limited_stores(100, 300_000)
    store(answers, conversations, "resp_a")
    for n in range(5):  # inputs too long for the model: written, never answered
        conversations[f"resp_failed_{n}"] = [{"role": "user", "content": "x" * 100_000}]
    assert set(conversations) == {"resp_a", "resp_failed_3", "resp_failed_4"}
    conversations["resp_huge"] = [{"role": "user", "content": "x" * 400_000}]
    assert set(conversations) == {"resp_a", "resp_failed_3", "resp_failed_4"}
    assert 200_000 < answers.bounds.unanswered.bytes <= 300_000


def test_a_long_conversation_weighs_its_messages_once_and_its_lists_each():
    answers, conversations = limited_stores(1000, ROOMY)
    history, turns = [], 100
    for turn in range(turns):  # each turn continues the last: SGLang's list(parent) + input, then + output
        key = f"resp_{turn}"
        question = {"role": "user", "content": f"turn {turn} " + "q" * 2000}
        conversations[key] = history + [question]
        answers[key] = f"answer {turn}"
        history = history + [question, {"role": "assistant", "content": "a" * 2000}]
        conversations[key] = history
    messages_once = sum(weigh(message) for message in history)
    lists = sum(8 * 2 * (turn + 1) for turn in range(turns))  # each turn's list of pointers
    assert messages_once + lists <= answers.bounds.answered.bytes < 1.2 * (messages_once + lists) + 100 * 100
    each_turn_again = sum(weigh(history[:2 * (turn + 1)]) for turn in range(turns))
    assert answers.bounds.answered.bytes < each_turn_again / 10  # weighing each turn whole: some 40x


def test_dropping_every_holder_of_a_message_frees_its_weight_and_a_shared_one_is_freed_last():
    weights = SharedWeights()
    shared, own = {"content": "s" * 10_000}, {"content": "o" * 10_000}
    weights.hold("a", [shared])
    a_alone = weights.bytes
    weights.hold("b", [shared, own])
    b_alone = weights.alone("b")
    assert weights.bytes < a_alone + b_alone and weights.bytes > b_alone  # the shared one counted once
    weights.release("a")
    assert weights.bytes == b_alone
    weights.hold("b", [own])  # rewritten: the shared one no longer held
    assert weights.bytes == weights.alone("b") < b_alone - weigh(shared)
    weights.release("b")
    assert weights.bytes == 0


def test_an_answer_moves_its_conversation_to_the_answered_and_both_bounds_see_it():
    answers, conversations = limited_stores(100, 300_000)
    conversations["resp_a"] = [{"role": "user", "content": "x" * 100_000}]
    bounds = answers.bounds
    unanswered = bounds.unanswered.bytes
    assert unanswered > 100_000 and bounds.answered_bytes == 0
    answers["resp_a"] = "answer"
    assert bounds.unanswered.bytes == 0 and bounds.answered_bytes >= unanswered


def test_weigh_is_about_what_python_allocates():
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    value = [{"role": "user", "content": "x" * (10 + n), "n": [n, n * 1.5]} for n in range(2000)]
    allocated = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert 0.7 * allocated < weigh(value) < 1.6 * allocated


def test_a_continuation_reads_its_history_as_it_first_did_for_as_long_as_it_lives():
    answers, conversations = limited_stores(1, ROOMY)
    store(answers, conversations, "resp_a")
    request = Request("resp_b", "resp_a")
    read = lambda: list(conversations["resp_a"]) + [{"role": "user", "content": "and then?"}]  # as SGLang reads
    first = conversations.history_of(request, read)
    store(answers, conversations, "resp_c")  # resp_a evicted (limit 1): reading it again would raise
    with pytest.raises(KeyError):
        read()
    assert conversations.history_of(request, read) == first
    assert conversations.history_of(request, read) is not first  # a copy: SGLang appends to what it gets
    other = Request("resp_d", "resp_c")
    assert conversations.history_of(other, lambda: ["resp_c's"]) == ["resp_c's"]
    del request
    gc.collect()
    assert len(conversations._first_read) == 1  # the ended request's history went with it


class Answer(BaseModel):
    """A stored answer, as SGLang's ResponsesResponse holds its request's metadata."""

    status: str
    metadata: dict = {}


def test_a_background_answer_over_the_budget_empties_nothing_and_is_not_kept_once_made():
    stores = response_store.limited_stores(100, 300_000)
    answers, conversations = stores.answers, stores.conversations
    for key in ("resp_a", "resp_b", "resp_c"):
        store(answers, conversations, key)
    conversations["resp_bg"] = [{"role": "user", "content": "hi"}]
    answers["resp_bg"] = Answer(status="queued", metadata={"x": "x" * 400_000})  # SGLang's order
    stores.running["resp_bg"] = "its task"
    stores.running["resp_bg_small"] = "its task"
    answers["resp_bg_small"] = Answer(status="queued")
    store(answers, conversations, "resp_d")
    assert set(answers) == {"resp_a", "resp_b", "resp_c", "resp_d", "resp_bg", "resp_bg_small"}
    answers["resp_bg"].status = "cancelled"  # as SGLang cancels it, in place; its task still runs
    store(answers, conversations, "resp_e")
    assert "resp_bg" in answers and answers.evictions == 0  # its task reads it again as it ends
    stores.running.pop("resp_bg", None)  # the task's end
    assert "resp_bg" not in answers and "resp_bg" not in conversations and stores.refused == 1
    assert set(answers) == {"resp_a", "resp_b", "resp_c", "resp_d", "resp_e", "resp_bg_small"}
    answers["resp_bg_small"] = Answer(status="completed")
    stores.running.pop("resp_bg_small", None)
    assert "resp_bg_small" in answers and stores.answered_bytes < 300_000


def test_the_conversation_of_an_answer_not_kept_is_not_kept_either():
    stores = response_store.limited_stores(100, 300_000)
    answers, conversations = stores.answers, stores.conversations
    conversations["resp_big"] = [{"role": "user", "content": "hi"}]
    answers["resp_big"] = "y" * 400_000
    conversations["resp_big"] = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "..."}]
    assert "resp_big" not in conversations and stores.unanswered.bytes == 0


def test_a_continuation_weighs_only_its_own_messages(monkeypatch):
    answers, conversations = limited_stores(1000, ROOMY)
    calls = []
    monkeypatch.setattr(response_store, "weigh", lambda value, most=float("inf"): calls.append(value) or 100)
    history = []
    for turn in range(50):
        key = f"resp_{turn}"
        question = {"role": "user", "content": f"turn {turn}"}
        conversations[key] = history + [question]  # at its arrival: the parent's messages and its input
        answers[key] = f"answer {turn}"
        history = history + [question, {"role": "assistant", "content": "..."}]
        conversations[key] = history
    assert len(calls) == 50 * 3  # its input, its answer and its output, whatever came before


def test_weigh_stops_past_what_it_is_asked_to_tell_apart():
    many = [{} for _ in range(100_000)]
    assert weigh(many, most=10_000) > 10_000
    assert weigh(many) > 5_000_000


def test_an_answer_whose_conversation_was_not_kept_is_not_kept_either():
    """A continuation of it would find the answer and not its conversation (SGLang's KeyError, a 500)."""
    stores = response_store.limited_stores(100, 300_000)
    answers, conversations = stores.answers, stores.conversations
    conversations["resp_big"] = [{"role": "user", "content": "x" * 400_000}]  # at its arrival: too heavy
    answers["resp_big"] = Answer(status="completed")
    conversations["resp_big"] = [{"role": "user", "content": "x" * 400_000}, {"role": "assistant", "content": "."}]
    assert "resp_big" not in answers and "resp_big" not in conversations
    conversations["resp_bg"] = [{"role": "user", "content": "x" * 400_000}]  # the same, in the background
    answers["resp_bg"] = Answer(status="queued")
    stores.running["resp_bg"] = "its task"
    assert "resp_bg" in answers  # kept while made: its task reads it
    answers["resp_bg"] = Answer(status="failed")  # the model refused its input; nothing writes its conversation
    stores.running.pop("resp_bg", None)
    assert "resp_bg" not in answers and stores.unanswered.bytes == 0 and stores.answered_bytes == 0


@pytest.mark.parametrize("metadata, problem", [
    (None, None), ({}, None), ({f"k{n}": "v" * 512 for n in range(16)}, None),
    ({f"k{n}": "v" for n in range(17)}, "at most 16 pairs, got 17"),
    ({"k" * 65: "v"}, "each key a string of at most 64 characters"),
    ({"k": "v" * 513}, "each value a string of at most 512 characters, got one of 513 for 'k'"),
    ({"k": [{}] * 3}, "each value a string of at most 512 characters, got list for 'k'"),
    (["k"], "metadata: an object of strings, got list"),
])
def test_a_stored_request_s_metadata_is_held_to_openai_s_bounds(metadata, problem):
    found = response_store.metadata_problem(metadata)
    assert found == problem if problem is None else problem in found


def test_background_answers_in_flight_are_bounded_with_those_whose_task_is_not_started_yet():
    stores = response_store.limited_stores(10, ROOMY, most_background=2)
    running = stores.running
    with running.admit():  # SGLang tokenizes it, stores it queued, starts its task, answers the request
        running["resp_a"] = "its task"
    with running.admit():  # admitted, its task not started yet: it counts already
        with pytest.raises(BackgroundFull, match=r"at most 2 background answers at once "
                                                 r"\(--mint-max-background-responses\)"):
            running.admit()
        running["resp_b"] = "its task"
    with pytest.raises(BackgroundFull):
        running.admit()
    running.pop("resp_a")  # its task ended
    with running.admit():  # refused by SGLang (no task started): it holds nothing after
        pass
    with running.admit():
        running["resp_c"] = "its task"
    figures = stores.figures()
    assert (running.admitting, figures["background"], figures["background_limit"], figures["background_refused"]
            ) == (0, 2, 2, 2)

