"""A real SGLang server given only `--mint-catalog postgresql://...`: PostgreSQL metadata, blobs in a real
S3-compatible server (moto), outputs equal HF+PEFT, and a publish from another process is served on the
next request, as is a rollback."""

from __future__ import annotations

import json
import sys
import urllib.request

import openai
import pytest
from transformers import AutoTokenizer

from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.server import SGLangServer

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"
TOL = 1e-4


def complete(client, model, max_tokens=6):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=1,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    return r.choices[0].model_extra["token_ids"], r.choices[0].logprobs.token_logprobs


def test_engine_serves_a_postgres_catalog_with_s3_blobs(tiny_model, tiny_adapters, pg_url, s3_url,
                                                        postgres_server, tmp_path):
    first, second = sorted(tiny_adapters)[:2]
    with init_catalog(pg_url, str(tiny_model), blobs=s3_url, cache_dir=str(tmp_path / "publisher")) as cat:
        cat.publish("acme/bot", str(tiny_adapters[first]))
    prompt_ids = AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]
    refs = run_reference(sys.executable, tiny_model, [
        {"adapter": str(tiny_adapters[name]), "prompt_ids": prompt_ids, "max_tokens": 6} for name in (first, second)])
    assert refs[0]["logprobs"] != pytest.approx(refs[1]["logprobs"], abs=TOL)  # the two revisions are told apart
    log = tmp_path / "server.log"
    extra = ["--mint-catalog", pg_url, "--mint-catalog-cache", str(tmp_path / "engine")]
    with SGLangServer(tiny_model, enable_mint=True, extra_args=extra, log_path=log, python=sys.executable) as srv:
        client = openai.OpenAI(base_url=srv.openai_url, api_key="none", max_retries=0, timeout=600)
        tokens, logprobs = complete(client, "acme/bot")
        assert tokens == refs[0]["tokens"] and logprobs == pytest.approx(refs[0]["logprobs"], abs=TOL)
        with open_catalog(pg_url, cache_dir=str(tmp_path / "publisher")) as cat:  # another node publishes
            assert cat.publish("acme/bot", str(tiny_adapters[second])).revision == 2
        tokens, logprobs = complete(client, "acme/bot")  # the very next request
        assert tokens == refs[1]["tokens"] and logprobs == pytest.approx(refs[1]["logprobs"], abs=TOL)
        with open_catalog(pg_url, cache_dir=str(tmp_path / "publisher")) as cat:
            assert cat.rollback("acme/bot").revision == 1
        tokens, logprobs = complete(client, "acme/bot")  # and a rollback, the same way
        assert tokens == refs[0]["tokens"] and logprobs == pytest.approx(refs[0]["logprobs"], abs=TOL)
        with urllib.request.urlopen(srv.url + "/mint/status") as r:
            shown = json.load(r)["catalog"]
        assert shown.startswith("postgresql://postgres:***@127.0.0.1:")
        assert any((tmp_path / "engine" / "views").iterdir())  # views live in the engine's own folder
    assert postgres_server.password not in log.read_text()
