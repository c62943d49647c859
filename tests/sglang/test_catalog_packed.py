"""A catalog serving one adapter as a PEFT revision and as a packed revision: identical outputs.

Real SGLang on CPU with --enable-mint --mint-catalog, the official openai
client. ``peft/<name>`` and ``packed/<name>`` are the same adapter stored both
ways (``Catalog.publish(..., pack=True)``); the packed one is read through
packed_loader and put into the LoRA pool by packed_pool's one-copy fill.
"""

from __future__ import annotations


import openai
import pytest

from sglang_mint.catalog import open_catalog

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"


@pytest.fixture(scope="module")
def catalog(tiny_adapters, shared_catalog):
    with open_catalog(str(shared_catalog)) as cat:
        for name, folder in tiny_adapters.items():
            assert cat.publish(f"peft/{name}", str(folder)).format == "peft"
            assert cat.publish(f"packed/{name}", str(folder), pack=True).format == "packed"
    return shared_catalog


@pytest.fixture(scope="module")
def server(catalog, shared_catalog_server):
    return shared_catalog_server


def complete(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    return r.choices[0].model_extra["token_ids"], r.choices[0].logprobs.token_logprobs


def test_packed_revision_serves_identically_to_peft(server, tiny_adapters):
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    outputs = []
    for name in tiny_adapters:
        peft, packed = complete(client, f"peft/{name}"), complete(client, f"packed/{name}")
        assert packed == peft, name  # same tokens, bit-identical logprobs
        outputs.append(tuple(peft[0]))
    assert len(set(outputs)) > 1  # the adapters differ, so the comparison can fail
    log = server.log_path.read_text(errors="replace")
    for name in tiny_adapters:  # the packed revisions went into the pool by the one-copy fill
        assert f"packed adapter mint:packed/{name}@1 into pool slot" in log, server.log_tail()
        assert f"packed adapter mint:peft/{name}@1" not in log
