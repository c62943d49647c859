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


def test_an_entry_weighs_about_its_text():
    from types import SimpleNamespace

    from sglang_mint.frontend.response_store import weigh

    assert weigh("x" * 1000) == 1000 and weigh(b"xy") == 2
    message = {"role": "user", "content": "x" * 1000}
    assert 1000 < weigh([message]) < 1100
    answer = SimpleNamespace(status="completed", output=[SimpleNamespace(content=[SimpleNamespace(text="y" * 5000)])])
    assert 5000 < weigh(answer) < 5200  # a pydantic model's fields, as an object's attributes


def test_past_the_bytes_the_unanswered_conversations_go_first_then_the_least_recently_used_answers():
    answers, conversations = limited_stores(100, max_bytes=10_000)
    store(answers, conversations, "resp_a")
    store(answers, conversations, "resp_b")
    for n in range(4):  # requests that failed: 3,000 bytes of input each
        conversations[f"resp_failed_{n}"] = [{"role": "user", "content": "x" * 3000}]
    assert set(conversations) == {"resp_a", "resp_b", "resp_failed_1", "resp_failed_2", "resp_failed_3"}
    assert conversations.weights.used <= 10_000
    conversations["resp_c"] = [{"role": "user", "content": "x" * 9000}]  # in flight
    answers["resp_c"] = "answer resp_c"
    conversations["resp_c"] = [{"role": "user", "content": "x" * 9000}, {"role": "assistant", "content": "y" * 800}]
    assert not any(key.startswith("resp_failed") for key in conversations)  # the oldest failed go first
    assert set(answers) == {"resp_c"} and "resp_a" not in conversations  # then the least recently used answers
    assert answers.weights.used <= 10_000 and answers.evictions == 2


def test_an_answer_weighing_more_than_all_the_bytes_is_not_kept():
    answers, conversations = limited_stores(100, max_bytes=1000)
    store(answers, conversations, "resp_a")
    answers["resp_big"] = "x" * 5000
    assert "resp_big" not in answers and "resp_a" not in answers  # all went, the big one last
    assert answers.weights.used == 0 and not conversations
