"""The request checks (frontend/request_values.py) on SGLang's own SamplingParams, made and normalized as its
tokenizer manager makes them: none of these requests, all served by SGLang 0.5.23, is refused."""

from __future__ import annotations

from array import array
from types import SimpleNamespace

import numpy as np
import pytest
from transformers import AutoTokenizer

from sglang_mint.frontend.request_values import ModelLimits, check_tokenized_request

VOCAB = 512


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("kwargs", [
    {},
    {"max_new_tokens": 16, "temperature": 0, "top_p": 0.9, "top_k": 5, "min_p": 0.05, "n": 2},
    {"stop": ["\n\n", "END"], "stop_regex": [r"\d+ apples", r"\\end{document}"], "stop_token_ids": [3, 4.0]},
    {"json_schema": '{"type": "object"}', "skip_special_tokens": False, "no_stop_trim": True},
    {"custom_params": {"groups": {"a": [1, 2]}, "ids": [[1, 2], [3]]}},  # any JSON, as SGLang's routes declare
    {"logit_bias": {"5": -1e9, "6": 100.0}, "ignore_eos": True, "min_new_tokens": 2},
    {"max_new_tokens": np.int64(16), "temperature": np.float64(0.5), "logit_bias": {7: np.float32(3)}},  # Engine
    {"regex": "(ab|cd){2}", "spaces_between_special_tokens": False, "sampling_seed": 7, "repetition_penalty": 1.1},
])
def test_requests_sglang_serves_pass(tokenizer, kwargs):
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams(**kwargs)
    params.normalize(tokenizer)
    params.verify(VOCAB)
    tokenized = SimpleNamespace(input_ids=array("q", [1, 2, 3]), sampling_params=params, return_hidden_states="last")
    check_tokenized_request(tokenized, ModelLimits(vocab_size=VOCAB, hidden_size=128, max_top_logprobs=20))


def test_the_check_refuses_what_it_should_on_the_real_class(tokenizer):
    from sglang.srt.sampling.sampling_params import SamplingParams

    params = SamplingParams(max_new_tokens=8)
    params.normalize(tokenizer)
    params.skip_special_tokens = "no"  # as /vertex_generate's body sets it, past /generate's type check
    with pytest.raises(ValueError, match="sampling_params.skip_special_tokens: true or false"):
        check_tokenized_request(SimpleNamespace(input_ids=array("q", [1]), sampling_params=params),
                                ModelLimits(vocab_size=VOCAB, hidden_size=128, max_top_logprobs=20))
