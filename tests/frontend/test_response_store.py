"""LimitedStore: SGLang's stored /v1/responses answers and their conversations, at most a limit of them
(frontend/response_store.py). A real server: tests/sglang/test_stored_responses.py."""

from __future__ import annotations

import pytest

from sglang_mint.frontend.response_store import LimitedStore, limited_stores


def store(answers, conversations, key: str) -> None:
    """As SGLang stores a request's answer: its conversation as it starts, then the answer, then the
    conversation with the answer's output."""
    conversations[key] = [{"role": "user", "content": key}]
    answers[key] = f"answer {key}"
    conversations[key] = [{"role": "user", "content": key}, {"role": "assistant", "content": "..."}]


def test_past_the_limit_the_least_recently_used_answer_goes_with_its_conversation():
    answers, conversations = limited_stores(2)
    for key in ("resp_a", "resp_b"):
        store(answers, conversations, key)
    assert answers.get("resp_a") == "answer resp_a"  # read: resp_b is now the oldest
    store(answers, conversations, "resp_c")
    assert "resp_b" not in answers and "resp_b" not in conversations
    assert set(answers) == {"resp_a", "resp_c"} and set(conversations) == {"resp_a", "resp_c"}
    assert answers.evictions == 1


def test_a_kept_answer_keeps_its_conversation_whatever_else_is_written():
    answers, conversations = limited_stores(2)
    store(answers, conversations, "resp_a")
    for n in range(10):  # requests that start and fail: conversations with no answer
        conversations[f"resp_failed_{n}"] = [{"role": "user", "content": "x" * 1000}]
    assert "resp_a" in answers and "resp_a" in conversations
    assert set(conversations) == {"resp_a", "resp_failed_8", "resp_failed_9"}  # two unanswered at most


def test_a_conversation_whose_answer_never_came_is_dropped_in_its_turn():
    answers, conversations = limited_stores(2)
    conversations["resp_failed"] = [{"role": "user", "content": "x" * 1000}]  # the request then failed
    for key in ("resp_a", "resp_b", "resp_c"):
        conversations[key] = []  # in flight
    assert "resp_failed" not in conversations and len(conversations) == 2
    answers["resp_b"] = "answer resp_b"
    conversations["resp_d"] = []
    assert set(conversations) == {"resp_b", "resp_c", "resp_d"}  # resp_b answered: kept beside two in flight


def test_a_write_counts_as_use_and_a_missing_key_is_the_default():
    store = LimitedStore(2)
    store["a"], store["b"] = 1, 2
    store["a"] = 3
    store["c"] = 4
    assert dict(store) == {"a": 3, "c": 4}
    assert store.get("b", "gone") == "gone"
    with pytest.raises(KeyError):
        store["b"]


def test_a_limit_must_be_at_least_one():
    with pytest.raises(ValueError, match="at least 1"):
        LimitedStore(0)


def test_an_answer_still_being_made_is_never_dropped():
    from types import SimpleNamespace

    answers, conversations = limited_stores(2)
    answers["resp_bg"] = SimpleNamespace(status="queued")  # a background request's, oldest
    answers["resp_a"] = SimpleNamespace(status="completed")
    answers["resp_b"] = SimpleNamespace(status="completed")
    assert set(answers) == {"resp_bg", "resp_b"}  # resp_a, the oldest it could drop
    answers["resp_bg"] = SimpleNamespace(status="in_progress")
    answers["resp_c"] = SimpleNamespace(status="in_progress")
    assert set(answers) == {"resp_bg", "resp_c"}
    answers["resp_d"] = SimpleNamespace(status="queued")  # all three being made: over the limit until one ends
    assert set(answers) == {"resp_bg", "resp_c", "resp_d"}
    answers["resp_bg"] = SimpleNamespace(status="completed")
    assert set(answers) == {"resp_c", "resp_d"}  # resp_bg, done, was the oldest it could drop


def test_a_continuation_reads_the_conversation_it_stored_at_its_arrival_once_its_parent_is_gone():
    answers, conversations = limited_stores(1)
    store(answers, conversations, "resp_a")
    parent = list(conversations["resp_a"])
    assert conversations.history_at_arrival("resp_b", "resp_a") is None  # the parent kept: SGLang reads it
    conversations["resp_b"] = parent + [{"role": "user", "content": "and then?"}]  # resp_b continues resp_a
    answers["resp_b"] = "answer resp_b"  # its own answer evicts resp_a (limit 1)
    assert "resp_a" not in conversations
    assert conversations.history_at_arrival("resp_b", "resp_a") == parent + [{"role": "user", "content": "and then?"}]
    assert conversations.history_at_arrival("resp_b", None) is None  # continues nothing
    assert conversations.history_at_arrival("resp_c", "resp_a") is None  # stored nothing at its arrival
