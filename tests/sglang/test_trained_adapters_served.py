"""What `make demo` shows, end to end: each trained adapter (sglang_mint/dev/trained_adapters.py),
published to a catalog and asked by its bare id through SGLang's OpenAI endpoint with the official
client, answers prompts it was not trained on as it was trained to; the base model does not."""

from __future__ import annotations

import openai
import pytest

from sglang_mint.catalog import open_catalog
from sglang_mint.dev.demo import ANSWER_PROMPTS
from sglang_mint.dev.trained_adapters import BEHAVIOURS, expected_answer, trained_adapter_dirs, unseen_prompts

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

MAX_TOKENS = 12
PROMPTS = unseen_prompts(6) + ANSWER_PROMPTS


@pytest.fixture(scope="module")
def client(tiny_model, shared_catalog, shared_catalog_server):
    with open_catalog(str(shared_catalog)) as cat:
        for name, folder in trained_adapter_dirs(tiny_model).items():
            cat.publish(f"trained/{name}", str(folder))
    return openai.OpenAI(base_url=shared_catalog_server.openai_url, api_key="none", max_retries=0)


def answer(client, model: str, prompt: str) -> str:
    r = client.completions.create(model=model, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0)
    return r.choices[0].text


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_each_trained_adapter_is_served_by_its_id(name, client):
    expected = [expected_answer(name, p, MAX_TOKENS) for p in PROMPTS]
    assert [answer(client, f"trained/{name}", p) for p in PROMPTS] == expected
    base = [answer(client, "tiny", p) for p in PROMPTS]
    assert all(b != e for b, e in zip(base, expected)), base
