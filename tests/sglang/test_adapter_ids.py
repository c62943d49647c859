"""The adapter id in `model`, end to end: real SGLang on CPU with --enable-mint."""

from __future__ import annotations

import json
import sys

import openai
import pytest
from transformers import AutoTokenizer

from sglang_mint.dev.reference import run_reference
from sglang_mint.gateway.middleware import REQUESTED_MODEL_HEADER
from json_calls import post_json
from openai_jobs import answer_models

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"
MAX_TOKENS = 6
TOL = 1e-4


def complete(client, model, prompt=PROMPT, max_tokens=MAX_TOKENS):
    r = client.completions.create(
        model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, logprobs=1,
        extra_body={"return_token_ids": True},
    )
    choice = r.choices[0]
    return choice.model_extra["token_ids"], choice.logprobs.token_logprobs, r


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def reference(tiny_model, tiny_adapters, prompt_ids):
    """HF+PEFT fp32 greedy tokens/logprobs for the base model and each adapter."""
    names = [None, *tiny_adapters]
    jobs = [{"adapter": str(tiny_adapters[n]) if n else None, "prompt_ids": prompt_ids, "max_tokens": MAX_TOKENS}
            for n in names]
    return dict(zip(names, run_reference(sys.executable, tiny_model, jobs)))


def assert_matches(tokens, logprobs, ref):
    assert tokens == ref["tokens"]
    assert logprobs == pytest.approx(ref["logprobs"], abs=TOL)


@pytest.mark.parametrize("form", ["bare", "served"])
def test_adapter_id_in_model_matches_hf_peft(mint_client, tiny_adapters, reference, prompt_ids, form):
    for adapter_id in tiny_adapters:
        model = adapter_id if form == "bare" else f"tiny:{adapter_id}"
        tokens, logprobs, r = complete(mint_client, model)
        assert r.usage.prompt_tokens == len(prompt_ids)
        assert_matches(tokens, logprobs, reference[adapter_id])


@pytest.mark.parametrize("model", ["tiny", "tiny:"])
def test_served_name_alone_is_the_base_model(mint_client, reference, model):
    # "tiny:" with nothing after the colon is the base model in stock SGLang, and so here.
    tokens, logprobs, _ = complete(mint_client, model)
    assert_matches(tokens, logprobs, reference[None])


def test_adapters_change_the_output(reference, tiny_adapters):
    # Guards the test above: if adapters were no-ops, matching would prove nothing.
    base = reference[None]
    for adapter_id in tiny_adapters:
        assert reference[adapter_id]["logprobs"] != pytest.approx(base["logprobs"], abs=1e-3)


def test_chat_completions_select_the_adapter(mint_client, tiny_model, tiny_adapters):
    adapter_id = next(iter(tiny_adapters))
    messages = [{"role": "user", "content": "hello world"}]
    ids = AutoTokenizer.from_pretrained(tiny_model).apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True
    )["input_ids"]
    [ref] = run_reference(sys.executable, tiny_model, [
        {"adapter": str(tiny_adapters[adapter_id]), "prompt_ids": ids, "max_tokens": MAX_TOKENS},
    ])
    for model in (adapter_id, f"tiny:{adapter_id}"):
        r = mint_client.chat.completions.create(
            model=model, messages=messages, max_tokens=MAX_TOKENS, temperature=0, logprobs=True,
            extra_body={"return_token_ids": True, "ignore_eos": True},
        )
        choice = r.choices[0]
        assert r.usage.prompt_tokens == len(ids)
        assert choice.model_extra["response_token_ids"] == ref["tokens"]
        assert [c.logprob for c in choice.logprobs.content] == pytest.approx(ref["logprobs"], abs=TOL)


def test_responses_api_refuses_adapters_it_would_not_apply(mint_client, tiny_adapters):
    # SGLang's /v1/responses checks `model`, then builds its request without a LoRA path: a stock
    # adapter's name was answered by the base model, and a catalog id was "does not exist".
    adapter_id = next(iter(tiny_adapters))
    messages = [{"role": "user", "content": "hello world"}]

    def responses(model):
        return mint_client.responses.create(model=model, input=messages, max_output_tokens=4, temperature=0,
                                            store=False)

    assert responses("tiny").output_text  # the base model is served
    for model in (adapter_id, f"tiny:{adapter_id}", "acme/no-such-adapter"):
        with pytest.raises(openai.BadRequestError) as exc:
            responses(model)
        assert model in str(exc.value) and "/v1/chat/completions" in str(exc.value)
    assert complete(mint_client, adapter_id)[0]  # the same adapter through /v1/completions


def test_a_stored_response_is_read_by_an_id_only_the_server_makes(mint_client, mint_server):
    """With --enable-response-store, ``GET /v1/responses/{id}`` answers whoever names the id, and so do
    its cancel and a ``previous_response_id`` that continues the conversation. SGLang takes the id from
    the body's ``request_id`` when a client writes one: tenant A stored an answer under "resp_job-1", and
    tenant B read it back by that guessable id. A stored response's id is now the server's (resp_ and
    uuid4().hex); a body that writes one is refused, and one that is not stored keeps its own."""
    stored = mint_client.responses.create(model="tiny", input="hello world", max_output_tokens=4, temperature=0)
    assert stored.id.startswith("resp_") and len(stored.id) == 5 + 32
    assert mint_client.responses.retrieve(stored.id).output_text == stored.output_text  # the store works
    with pytest.raises(openai.BadRequestError) as exc:
        mint_client.responses.create(model="tiny", input="tenant a's secret", max_output_tokens=4, temperature=0,
                                     extra_body={"request_id": "resp_job-1"})
    assert "request_id" in str(exc.value) and "--enable-response-store" in str(exc.value)
    with pytest.raises(openai.NotFoundError):  # tenant B, who guessed it
        mint_client.responses.retrieve("resp_job-1")
    unstored = mint_client.responses.create(model="tiny", input="hello world", max_output_tokens=4, temperature=0,
                                            store=False, extra_body={"request_id": "resp_job-2"})
    assert unstored.id == "resp_job-2"


def test_a_session_is_continued_by_an_id_only_the_server_makes(mint_server, tiny_adapters):
    """``/generate`` with ``session_params: {"id": ...}`` runs on that session's context, and
    ``/close_session`` ends it, for whoever names the id; SGLang opens a session under the id its body
    writes. Tenant A opened streaming session "chat-1" and sent a prompt with its adapter; tenant B's
    request naming "chat-1" ran on A's context and cache (22 prompt tokens, 20 cached), and B could close
    it. A session's id is now the server's; a body that writes one is refused."""
    code, text = post_json(mint_server, "/open_session", {"capacity_of_str_len": 4000, "session_id": "chat-1",
                                                     "streaming": True})
    assert code == 400 and "session_id" in text, text
    code, text = post_json(mint_server, "/generate", {"text": " and", "session_params": {"id": "chat-1"},
                                                 "sampling_params": {"max_new_tokens": 1}})
    assert code != 200 or json.loads(text)["meta_info"]["finish_reason"]["type"] == "abort", text  # no such session
    code, session = post_json(mint_server, "/open_session", {"capacity_of_str_len": 4000, "streaming": True})
    assert code == 200 and len(json.loads(session)) == 32, session  # uuid4().hex: the store works
    turn = {"text": "my secret code is violet", "lora_path": next(iter(tiny_adapters)),
            "session_params": {"id": json.loads(session)}, "sampling_params": {"max_new_tokens": 2, "temperature": 0}}
    code, text = post_json(mint_server, "/generate", turn)
    assert code == 200, text
    code, text = post_json(mint_server, "/generate", {**turn, "text": " and"})
    assert code == 200 and json.loads(text)["meta_info"]["cached_tokens"] > 0, text  # the session's context
    assert post_json(mint_server, "/close_session", {"session_id": json.loads(session)})[0] == 200


def test_answers_name_the_model_the_request_named(mint_client, tiny_adapters):
    first, second = list(tiny_adapters)[:2]
    for model in (first, f"tiny:{first}", "tiny", "tiny:"):
        assert answer_models(mint_client, model) == [model] * 4
    # The gateway's header (gateway/middleware.py:REQUESTED_MODEL_HEADER) names the model the
    # client sent it; a client that sends it itself can only name the adapter it asked for.
    lora = {"extra_body": {"lora_path": first}}
    assert answer_models(mint_client, "tiny", **lora) == ["tiny"] * 4
    named = {"extra_headers": {REQUESTED_MODEL_HEADER: f"tiny:{first}"}}
    assert answer_models(mint_client, "tiny", **lora, **named) == [f"tiny:{first}"] * 4
    forged = {"extra_headers": {REQUESTED_MODEL_HEADER: second}}
    assert answer_models(mint_client, "tiny", **lora, **forged) == ["tiny"] * 4


def test_unknown_adapter_is_404_naming_the_id(mint_client):
    for model in ("no-such-adapter", "tiny:no-such-adapter", "acme/no-such-adapter"):
        with pytest.raises(openai.NotFoundError) as exc:
            complete(mint_client, model)
        assert exc.value.status_code == 404
        assert model.removeprefix("tiny:") in str(exc.value)
    with pytest.raises(openai.NotFoundError):
        mint_client.chat.completions.create(
            model="no-such-adapter", messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )


@pytest.mark.parametrize("model, complaint", [
    ("", "empty"),
    ("a" * 257, "257 characters"),
    ("bad\x01id", "control character"),
    ("../x", "'..' segment"),
    ("tiny:../etc/passwd", "'..' segment"),
    ("/etc/passwd", "starts with '/'"),
    ("other-model:a1", "not the served model name"),
])
def test_malformed_id_is_400(mint_client, model, complaint):
    with pytest.raises(openai.BadRequestError) as exc:
        complete(mint_client, model)
    assert exc.value.status_code == 400
    assert complaint in str(exc.value)


def test_server_keeps_serving_after_bad_requests(mint_client, reference, tiny_adapters):
    for bad in ("nope", "../x", ""):
        with pytest.raises(openai.APIStatusError):
            complete(mint_client, bad)
    adapter_id = next(iter(tiny_adapters))
    tokens, logprobs, _ = complete(mint_client, adapter_id)
    assert_matches(tokens, logprobs, reference[adapter_id])


def test_settings_reached_the_scheduler_process(mint_client, mint_server):
    complete(mint_client, "tiny")
    assert "sglang-mint enabled in scheduler process" in mint_server.log_path.read_text()
