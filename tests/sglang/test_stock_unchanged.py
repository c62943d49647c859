"""Without --enable-mint the plugin is loaded but SGLang behaves as stock."""

from __future__ import annotations

import sys

import openai
import pytest
from transformers import AutoTokenizer

from sglang_mint.dev.reference import run_reference

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "hello world the red fox"
MAX_TOKENS = 5


@pytest.fixture(scope="module")
def stock_client(stock_server):
    return openai.OpenAI(base_url=stock_server.openai_url, api_key="none", max_retries=0)


def tokens_of(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=MAX_TOKENS, temperature=0,
                                  extra_body={"return_token_ids": True})
    return r.choices[0].model_extra["token_ids"]


def test_stock_semantics_of_model(stock_client, tiny_model, tiny_adapters):
    adapter_id = next(iter(tiny_adapters))
    ids = AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]
    base, adapted = run_reference(sys.executable, tiny_model, [
        {"adapter": None, "prompt_ids": ids, "max_tokens": MAX_TOKENS},
        {"adapter": str(tiny_adapters[adapter_id]), "prompt_ids": ids, "max_tokens": MAX_TOKENS},
    ])
    assert base["tokens"] != adapted["tokens"]
    # Stock: a bare name, known or not, silently serves the base model...
    assert tokens_of(stock_client, adapter_id) == base["tokens"]
    assert tokens_of(stock_client, "no-such-adapter") == base["tokens"]
    # ...and only <served>:<name> selects an adapter.
    assert tokens_of(stock_client, f"tiny:{adapter_id}") == adapted["tokens"]


def test_stock_error_for_never_loaded_adapter(stock_client):
    with pytest.raises(openai.BadRequestError) as exc:
        tokens_of(stock_client, "tiny:no-such-adapter")
    assert "never been loaded" in str(exc.value)
