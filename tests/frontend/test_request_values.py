"""The values SGLang's scheduler raises on, refused before a request is sent on (frontend/request_values.py).
A real server: tests/sglang/test_request_values_served.py."""

from __future__ import annotations

from array import array
from types import SimpleNamespace
from typing import Optional

import msgspec
import pytest

from sglang_mint.frontend.request_values import (ModelLimits, check_lora_path_shape, check_parallel_samples,
                                                  check_tokenized_request)

VOCAB = 1000
LIMITS = ModelLimits(vocab_size=VOCAB, hidden_size=4, max_top_logprobs=20)


class Sampling(msgspec.Struct, kw_only=True, array_like=True):
    """A few of SGLang's SamplingParams fields, declared as it declares them (a msgspec Struct, array-like; the
    real class, normalized as the tokenizer manager does: tests/sglang/test_request_values_real.py)."""

    max_new_tokens: Optional[int] = 128
    top_k: int = -1
    stop_token_ids: Optional[set[int]] = None
    skip_special_tokens: bool = True
    json_schema: Optional[str] = None
    stop_strs: Optional[list[str]] = None
    logit_bias: Optional[dict[str, float]] = None


class Embeds(SimpleNamespace):
    """Stands in for SGLang's PositionalEmbeds: ``embeds`` of a shape, at ``positions``."""

    def reconstruct(self, device):
        pass


def tokenized(**fields):
    """One prompt's request as the scheduler gets it, well formed unless ``fields`` say otherwise."""
    params = Sampling()
    for name in Sampling.__struct_fields__:
        if name in fields:
            setattr(params, name, fields.pop(name))  # a Struct takes any value set after it is made, as SGLang's
    base = dict(input_ids=array("q", [1, 2, 999]), mm_inputs=None, logprob_start_len=-1, top_logprobs_num=0,
                return_hidden_states=False, token_indices_to_pool=None, positional_embed_overrides=None,
                sampling_params=params)
    return SimpleNamespace(**{**base, **fields})


def test_a_well_formed_request_passes():
    check_tokenized_request(tokenized(), LIMITS)
    check_tokenized_request(tokenized(input_ids=array("q")), LIMITS)  # a session's turn may add no tokens
    check_tokenized_request(tokenized(top_k=2**31 - 1, stop_token_ids={0, 999},
                                      logit_bias={"5": -1e9, "6": 100, 7: 3}, top_logprobs_num=20,
                                      token_indices_to_pool=[0, 2], return_hidden_states="last",
                                      positional_embed_overrides=Embeds(embeds=SimpleNamespace(shape=(2, 4)),
                                                                        positions=[0, 2])), LIMITS)


@pytest.mark.parametrize("fields, message", [
    ({"input_ids": array("q", [1, 1000])}, r"input_ids: token id 1000 is outside the model's vocabulary \(0 to 999\)"),
    ({"input_ids": array("q", [-7, 1])}, r"input_ids: token id -7"),
    ({"logprob_start_len": [0]}, r"logprob_start_len: an integer for one prompt, got list"),
    ({"top_logprobs_num": [5]}, r"top_logprobs_num: an integer for one prompt, got list"),
    ({"top_logprobs_num": 21}, r"at most 20 on this server \(--mint-max-top-logprobs\); got 21"),
    ({"return_hidden_states": []}, r"return_hidden_states: true, false or \"last\" for one prompt, got \[\]"),
    ({"token_indices_to_pool": [3]}, r"token_indices_to_pool: a non-empty list of positions in the prompt \(0 to 2\)"),
    ({"token_indices_to_pool": []}, r"token_indices_to_pool"),
    ({"positional_embed_overrides": {}}, r"positional_embed_overrides: embeddings only a caller inside"),
    ({"positional_embed_overrides": Embeds(embeds=SimpleNamespace(shape=(1, 2)), positions=[0])},
     r"one vector of the model's hidden size, 4, per position.*got \[1, 2\] at \[0\]"),
    ({"positional_embed_overrides": Embeds(embeds=SimpleNamespace(shape=(1, 4)), positions=[3])},
     r"each position in the prompt \(0 to 2\)"),
    ({"stop_strs": ["ok", "x" * 257]}, r"stop: each stop string at most 256 characters, got one of 257"),
    ({"max_new_tokens": 8.5}, r"sampling_params.max_new_tokens: an integer \(or null\), got float"),
    ({"top_k": True}, r"sampling_params.top_k: an integer \(or null\), got bool"),
    ({"skip_special_tokens": "no"}, r"sampling_params.skip_special_tokens: true or false \(or null\), got str"),
    ({"json_schema": {"type": "object"}}, r"sampling_params.json_schema: a string \(or null\), got dict"),
    ({"top_k": 2**31}, r"top_k: at most 2147483647"),
    ({"stop_token_ids": {40000000}}, r"stop_token_ids: each a token id of the model's vocabulary \(0 to 999\)"),
    ({"stop_token_ids": {-3}}, r"stop_token_ids"),
    ({"logit_bias": {"5": float("inf")}}, r"logit_bias: each bias a number from -1e\+09 to 1e\+09, got inf for token 5"),
    ({"logit_bias": {"5": float("nan")}}, r"logit_bias"),
    ({"logit_bias": {"5": 1e10}}, r"logit_bias"),
])
def test_a_value_the_scheduler_raises_on_is_refused_naming_the_field(fields, message):
    with pytest.raises(ValueError, match=message):
        check_tokenized_request(tokenized(**fields), LIMITS)


def test_a_multimodal_prompt_keeps_its_placeholder_ids():
    check_tokenized_request(tokenized(input_ids=array("q", [1, 151655]), mm_inputs=object()), LIMITS)


def test_the_top_logprobs_cap_never_passes_the_vocabulary():
    with pytest.raises(ValueError, match="at most the vocabulary size, 1000; got 1001"):
        check_tokenized_request(tokenized(top_logprobs_num=1001), LIMITS._replace(max_top_logprobs=5000))


@pytest.mark.parametrize("lora_path, single", [(None, True), ("a", True), (["a", None], False), ("a", False)])
def test_one_adapter_name_per_prompt_passes(lora_path, single):
    check_lora_path_shape(lora_path, single)


@pytest.mark.parametrize("lora_path, single, message", [
    ([None], True, "lora_path: one adapter name \\(a string\\) for one prompt, got a list"),
    (["a"], True, "for one prompt"),
    ([["a"], None], False, "lora_path: adapter names are strings, got list"),
    (7, True, "got int"),
])
def test_a_lora_path_of_another_shape_is_refused(lora_path, single, message):
    with pytest.raises(ValueError, match=message):
        check_lora_path_shape(lora_path, single)


def test_choices_of_a_prompt_are_bounded():
    for params in (None, {"n": 1024}, [{"n": 8}, {"n": 8}], {"max_new_tokens": 4}):
        check_parallel_samples(params)
    for params in ({"n": 1025}, [{"n": 2}, {"n": 10**6}]):
        with pytest.raises(ValueError, match="n: at most 1024 choices of a prompt"):
            check_parallel_samples(params)
