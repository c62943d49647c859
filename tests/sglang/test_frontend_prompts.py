"""The bound on a request's lora_path list is SGLang's own count of its prompts.

SGLang's GenerateReqInput and EmbeddingReqInput, normalized as the tokenizer manager normalizes
them before the frontend resolves their lora_path (tests/sglang/test_bad_inputs.py sends the
refusal through a real server)."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("fields, n, expected", [
    ({"text": "hi"}, 1, 1),
    ({"text": ["a", "b", "c"]}, 1, 3),
    ({"input_ids": [5, 6, 7]}, 1, 1),  # one prompt of three tokens
    ({"input_ids": [[5, 6], [7]]}, 1, 2),
    ({"text": ["a", "b"]}, 3, 6),  # each prompt sampled three times: SGLang repeats the lora_path list alike
])
def test_prompts_of_a_generate_request(fields, n, expected):
    from sglang.srt.managers.io_struct import GenerateReqInput

    from sglang_mint.sglang.frontend import prompts

    obj = GenerateReqInput(**fields, sampling_params={"n": n})
    obj.normalize_batch_and_arguments()
    assert prompts(obj) == expected


def test_prompts_of_an_embedding_request():
    from sglang.srt.managers.io_struct import EmbeddingReqInput

    from sglang_mint.sglang.frontend import prompts

    obj = EmbeddingReqInput(text=["a", "b"])
    obj.normalize_batch_and_arguments()
    assert prompts(obj) == 2
