"""Values a request writes that SGLang's scheduler raises on (frontend/request_values.py), end to end.

Each body here but the prompt's token ids stopped the whole server with --enable-mint before this check:
the tokenizer manager passed the value on, the scheduler raised on it while taking the request in or
sampling the batch that held it, and every process went down (a token id outside the vocabulary in the
prompt was served). Now each is a 400 naming the field, and the server keeps serving.
"""

from __future__ import annotations

import json

import openai
import pytest
from json_calls import post_json

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast



@pytest.fixture(scope="module")
def vocab(tiny_model) -> int:
    return json.loads((tiny_model / "config.json").read_text())["vocab_size"]


def error_message(answer: dict) -> str:
    """The message of an error answer: SGLang's native shape, OpenAI's (/v1/score) or Ollama's."""
    error = answer.get("error", answer)
    return error if isinstance(error, str) else error["message"]


def serves(server) -> bool:
    return post_json(server, "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 1}})[0] == 200


@pytest.mark.parametrize("body, field", [
    ({"text": "hi", "lora_path": [None]}, "lora_path"),
    ({"text": "hi", "sampling_params": {"top_k": 2**31}}, "top_k"),
    ({"text": "hi", "return_logprob": True, "top_logprobs_num": 1_000_000}, "top_logprobs_num"),
    ({"text": "hi", "return_logprob": True, "logprob_start_len": [0]}, "logprob_start_len"),
    ({"text": "hi", "return_logprob": True, "top_logprobs_num": [5]}, "top_logprobs_num"),
    ({"text": "hi", "return_hidden_states": []}, "return_hidden_states"),
    ({"text": "hi", "sampling_params": {"stop_token_ids": [40_000_000], "min_new_tokens": 2}}, "stop_token_ids"),
    ({"input_ids": [1, 999_999_999]}, "input_ids"),
    ({"input_ids": [1, 2, 3], "token_indices_to_pool": [100_000], "sampling_params": {"max_new_tokens": 0}},
     "token_indices_to_pool"),
    ({"text": "hi", "positional_embed_overrides": {}}, "positional_embed_overrides"),
    ({"text": "hi", "sampling_params": {"top_k": 5, "logit_bias": {"5": 1e39}}}, "logit_bias"),
])
def test_a_generate_value_the_scheduler_raises_on_is_refused(mint_server, body, field):
    body.setdefault("sampling_params", {}).setdefault("max_new_tokens", 2)
    code, text = post_json(mint_server, "/generate", body)
    assert code == 400 and field in json.loads(text)["error"]["message"], (code, text)
    assert serves(mint_server)


def test_openai_routes_refuse_them_too(mint_client, mint_server):
    with pytest.raises(openai.BadRequestError, match="input_ids: token id 999999999 is outside"):
        mint_client.completions.create(model="tiny", prompt=[1, 999_999_999], max_tokens=2)
    with pytest.raises(openai.BadRequestError, match="top_logprobs_num"):
        mint_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            logprobs=True, top_logprobs=1_000_000)
    with pytest.raises(openai.BadRequestError, match="stop_token_ids"):
        mint_client.completions.create(model="tiny", prompt="hi", max_tokens=3,
                                       extra_body={"stop_token_ids": [-3], "min_tokens": 2})
    assert serves(mint_server)


def test_the_same_fields_within_range_are_served(mint_client, mint_server, tiny_adapters, vocab):
    adapter = next(iter(tiny_adapters))
    code, text = post_json(mint_server, "/generate", {
        "text": ["hi", "hello"], "lora_path": [adapter, None], "return_logprob": True, "top_logprobs_num": 5,
        "logprob_start_len": [0, 0], "sampling_params": {"max_new_tokens": 3, "min_new_tokens": 2, "top_k": 5,
                                                         "stop_token_ids": [vocab - 1], "logit_bias": {"5": -100}}})
    assert code == 200, text
    answers = json.loads(text)
    assert len(answers) == 2 and all(len(a["meta_info"]["output_top_logprobs"][0]) == 5 for a in answers), text
    assert all(5 not in a["output_ids"] for a in answers), text  # a bias of -100 bans the token
    answer = mint_client.completions.create(model="tiny", prompt=[1, vocab - 1], max_tokens=2, logprobs=3)
    assert answer.choices[0].finish_reason == "length" and len(answer.choices[0].logprobs.top_logprobs[0]) == 3


@pytest.mark.parametrize("path, body, field", [
    ("/vertex_generate", {"instances": [{"text": "hi"}], "parameters": {"sampling_params": {"max_new_tokens": 8.5}}},
     "sampling_params.max_new_tokens"),
    ("/vertex_generate", {"instances": [{"text": "hi"}],
                          "parameters": {"sampling_params": {"max_new_tokens": 2, "skip_special_tokens": "no"}}},
     "sampling_params.skip_special_tokens"),
    ("/vertex_generate", {"instances": [{"text": "hi"}],
                          "parameters": {"sampling_params": {"max_new_tokens": 2, "json_schema": {"type": "object"}}}},
     "sampling_params.json_schema"),
    ("/api/generate", {"model": "tiny", "prompt": "hi", "stream": False, "options": {"num_predict": 8.5}},
     "sampling_params.max_new_tokens"),
    ("/v1/score", {"query": [5, 6], "items": [[7]], "label_token_ids": [1], "embed_override_token_id": 5,
                   "query_embed_overrides": [[0.5, 0.5]]}, "embedding overrides"),
])
def test_routes_past_generate_s_type_check_are_checked_too(mint_server, path, body, field):
    """/vertex_generate and Ollama's /api/generate build the request past /generate's type check; /v1/score
    turns a body's vectors into embedding overrides. Each of these stopped the server."""
    code, text = post_json(mint_server, path, body)
    assert code == 400 and field in error_message(json.loads(text)), (code, text)
    assert serves(mint_server)


def test_chat_template_kwargs_reach_the_sampling_parameters_checked(mint_client, mint_server):
    with pytest.raises(openai.BadRequestError, match="sampling_params.spaces_between_special_tokens"):
        mint_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            extra_body={"chat_template_kwargs": {"spaces_between_special_tokens": [1]}})
    assert serves(mint_server)


def test_top_logprobs_stay_within_the_server_s_cap(mint_client):
    with pytest.raises(openai.BadRequestError, match=r"at most 20 on this server \(--mint-max-top-logprobs\)"):
        mint_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=2,
                                            logprobs=True, top_logprobs=21)
    answer = mint_client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}],
                                                 max_tokens=2, logprobs=True, top_logprobs=20)
    assert len(answer.choices[0].logprobs.content[0].top_logprobs) == 20


def test_choices_and_stop_strings_that_held_a_loop_are_bounded(mint_client, mint_server):
    """A million choices of a prompt held the tokenizer manager's loop for 13 s before one was sent; stop strings
    of 54,000 characters cost the scheduler 0.55 s a step of a streamed request. Both are refused past a bound."""
    with pytest.raises(openai.BadRequestError, match="n: at most 1024 choices of a prompt, got 1025"):
        mint_client.completions.create(model="tiny", prompt="hi", max_tokens=1, n=1025)
    with pytest.raises(openai.BadRequestError, match="stop: each stop string at most 256 characters, got one of 300"):
        mint_client.completions.create(model="tiny", prompt="hi", max_tokens=2, stop=["x" * 300])
    answer = mint_client.completions.create(model="tiny", prompt="hi", max_tokens=2, n=3, stop=["x" * 256],
                                            temperature=1)
    assert len(answer.choices) == 3
