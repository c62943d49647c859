"""SGLang's stored /v1/responses answers within --mint-max-stored-responses and --mint-stored-responses-bytes
(sglang/response_store.py), end to end.

Under --enable-response-store SGLang keeps every stored answer and its conversation, and the conversation of a
request that failed, for good, and queues every background request, which holds no connection while it waits.
The shared ``mint_server`` keeps four answers, within 2 MiB, and makes two background ones at once.
"""

from __future__ import annotations

import time

import openai
import pytest
from mint_status import mint_status

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

MAX_STORED = 4
BUDGET_BYTES = 2 << 20


def tool_of(size: int) -> dict:
    """A function tool described in ``size`` bytes. SGLang stores the request's tools with its answer, whether
    or not it parses tool calls (this server does not): a tenant's bytes the model never sees."""
    return {"type": "function", "name": "lookup", "description": "x" * size,
            "parameters": {"type": "object", "properties": {}}}


def test_past_the_limit_the_oldest_answer_is_gone_and_the_newest_go_on(mint_client):
    def ask(text: str, **extra):
        return mint_client.responses.create(model="tiny", input=text, max_output_tokens=2, temperature=0, **extra)

    first = ask("hello one")
    assert mint_client.responses.retrieve(first.id).id == first.id  # stored
    later = [ask(f"hello {n}") for n in range(MAX_STORED)]
    with pytest.raises(openai.NotFoundError):
        mint_client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):  # nor can it be continued
        ask("and then?", previous_response_id=first.id)
    assert [mint_client.responses.retrieve(r.id).id for r in later] == [r.id for r in later]
    follow_up = ask("and then?", previous_response_id=later[-1].id)  # a kept conversation goes on
    assert follow_up.status in ("completed", "incomplete")


def test_a_continuation_outlives_the_answer_it_continues(mint_client):
    """A request continuing an answer reads that answer's conversation again once its own answer is made. Here
    ``MAX_STORED`` newer answers are stored while it streams, so the answer it continues is evicted meanwhile:
    it still ends (SGLang cut its stream off), is stored, and can be continued in turn. What its stored conversation
    holds: tests/frontend/test_response_store.py."""
    def ask(text: str, **extra):
        return mint_client.responses.create(model="tiny", input=text, max_output_tokens=2, temperature=0, **extra)

    first = ask("hello one")
    events = iter(mint_client.responses.create(model="tiny", input="and then?", previous_response_id=first.id,
                                               max_output_tokens=400, temperature=0, stream=True))
    kinds, continuation = [], None
    for event in events:  # until the continuation is making its answer
        kinds.append(event.type)
        if event.type == "response.created":
            continuation = event.response.id
        if event.type == "response.output_text.delta":
            break
    for n in range(MAX_STORED):
        ask(f"meanwhile {n}")
    with pytest.raises(openai.NotFoundError):
        mint_client.responses.retrieve(first.id)  # evicted while the continuation streamed
    with pytest.raises(openai.NotFoundError):
        mint_client.responses.retrieve(continuation)  # and the continuation not done yet: stored once it is
    last = None
    for event in events:
        kinds.append(event.type)
        last = event
    assert last is not None and last.type in ("response.completed", "response.incomplete"), kinds[-3:]
    continued = last.response
    assert mint_client.responses.retrieve(continued.id).id == continued.id
    then = ask("and after that?", previous_response_id=continued.id)
    assert then.status in ("completed", "incomplete")


def test_past_the_bytes_the_least_recently_used_answers_go_and_one_over_them_alone_is_not_kept(mint_client):
    def ask(text: str, **extra):
        return mint_client.responses.create(model="tiny", input=text, max_output_tokens=2, temperature=0, **extra)

    heavy = [ask(f"heavy {n}", tools=[tool_of(BUDGET_BYTES * 2 // 5)]) for n in range(3)]  # fewer than MAX_STORED
    with pytest.raises(openai.NotFoundError):
        mint_client.responses.retrieve(heavy[0].id)
    assert [mint_client.responses.retrieve(r.id).id for r in heavy[1:]] == [r.id for r in heavy[1:]]
    too_heavy = ask("too heavy", tools=[tool_of(BUDGET_BYTES * 5 // 4)])
    assert too_heavy.status in ("completed", "incomplete")  # answered, and not kept
    with pytest.raises(openai.NotFoundError):
        mint_client.responses.retrieve(too_heavy.id)
    assert [mint_client.responses.retrieve(r.id).id for r in heavy[1:]] == [r.id for r in heavy[1:]]


def test_a_background_answer_over_the_bytes_is_kept_while_made_and_empties_nothing(mint_client):
    """A background answer is kept however heavy while its task makes it (the task reads it again as it ends),
    and weighed once made: over the budget alone, it then goes alone."""
    kept = mint_client.responses.create(model="tiny", input="kept", max_output_tokens=2, temperature=0)
    made = mint_client.responses.create(model="tiny", input="in the background", max_output_tokens=2,
                                        temperature=0, background=True, tools=[tool_of(BUDGET_BYTES * 5 // 4)])
    assert made.status in ("queued", "in_progress")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            status = mint_client.responses.retrieve(made.id).status
        except openai.NotFoundError:
            break
        assert status in ("queued", "in_progress", "completed", "incomplete"), status
        time.sleep(0.2)
    else:
        pytest.fail(f"the background answer over the budget was still kept after 60 s: {status}")
    assert mint_client.responses.retrieve(kept.id).id == kept.id


def test_a_stored_request_s_metadata_is_held_to_openai_s_bounds(mint_client):
    """SGLang keeps a stored request's metadata with its answer as it came: 64 MiB of {}s weigh 1.5 GiB."""
    def ask(**extra):
        return mint_client.responses.create(model="tiny", input="hi", max_output_tokens=2, temperature=0, **extra)

    with pytest.raises(openai.BadRequestError, match="metadata: at most 16 pairs, got 17"):
        ask(metadata={f"key{n}": "value" for n in range(17)})
    with pytest.raises(openai.BadRequestError, match="each value a string of at most 512 characters"):
        ask(metadata={"notes": "x" * 513})
    kept = ask(metadata={"team": "search"})
    assert mint_client.responses.retrieve(kept.id).metadata == {"team": "search"}
    assert ask(store=False, metadata={f"key{n}": "value" for n in range(17)}).status in ("completed", "incomplete")


def test_background_answers_in_flight_are_bounded_and_a_slot_frees_as_one_ends(mint_client, mint_server):
    """On SGLang's own, one client queued 2,000 background requests in 10 s, holding no connection, and a plain
    answer then waited 26 s behind them."""
    def start():
        return mint_client.responses.create(model="tiny", input="count on", max_output_tokens=2000, temperature=0,
                                            background=True)

    running = [start(), start()]
    with pytest.raises(openai.RateLimitError, match=r"at most 2 background answers at once "
                                                    r"\(--mint-max-background-responses\)") as refused:
        start()
    assert refused.value.response.headers["retry-after"] == "1"
    figures = mint_status(mint_server)["stored_responses"]
    assert figures["background"] == figures["background_limit"] == 2 and figures["background_refused"] >= 1, figures
    plain = mint_client.responses.create(model="tiny", input="hi", max_output_tokens=2, temperature=0)
    assert plain.status in ("completed", "incomplete")  # a request that holds its connection is served
    statuses = [mint_client.responses.cancel(answer.id).status for answer in running]
    assert statuses == ["cancelled", "cancelled"], statuses  # both were still being made at the refusal
    again = start()
    assert again.status in ("queued", "in_progress")
    mint_client.responses.cancel(again.id)
