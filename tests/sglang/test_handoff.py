"""Adapter handoff from training: publish over HTTP or from Python, live for the next request.

A real server on CPU (--enable-mint, a catalog) on loopback; every call stays on
loopback. A caller elsewhere is played by a forwarding header (a proxy relayed the
request); a connection from another address is tested at the ASGI level in
test_admin_guard.py. HF+PEFT in its own process is the reference for what a
revision serves.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

import openai
import pytest
from transformers import AutoTokenizer

from test_catalog_serving import PROMPT, complete

from sglang_mint.catalog import open_catalog
from sglang_mint.client import MintAPIError, MintClient
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.tiny import randomize_lora

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

TOL = 1e-4
ADAPTER = "handoff/bot"


def peft_model(tiny_model, seed: int, r: int = 8):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = get_peft_model(base, LoraConfig(r=r, lora_alpha=2 * r, target_modules=[
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    randomize_lora(model, seed, b_std=0.05)
    return model


PROXIED = {"X-Forwarded-For": "203.0.113.7"}  # a proxy relayed this request from another machine


def proxied_call(url: str, method: str, path: str, headers: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of a call that carries a forwarding header, sent on loopback."""
    req = urllib.request.Request(url + path, data=b"{}" if method == "POST" else None, method=method,
                                 headers={**PROXIED, "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def catalog(tiny_adapters, shared_catalog):
    with open_catalog(str(shared_catalog)) as cat:
        cat.publish(ADAPTER, str(tiny_adapters["tiny-0000"]))
    return shared_catalog


@pytest.fixture(scope="module")
def server(catalog, shared_catalog_server):
    return shared_catalog_server


@pytest.fixture(scope="module")
def mint(server):
    return MintClient(server.url)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


def reference(tiny_model, folder, prompt_ids, max_tokens=6) -> dict:
    return run_reference(sys.executable, tiny_model, [{"adapter": str(folder), "prompt_ids": prompt_ids,
                                                       "max_tokens": max_tokens}])[0]


def test_publish_from_memory_is_served_next_and_streams_keep_their_revision(
        client, mint, tiny_model, tiny_adapters, prompt_ids, tmp_path):
    long_tokens = 48
    old = reference(tiny_model, tiny_adapters["tiny-0000"], prompt_ids, long_tokens)
    stream = client.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=long_tokens, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)  # the request has resolved its revision

    trained = peft_model(tiny_model, seed=5)
    # from memory, in the request body (not the shared-memory inbox): nothing written by the trainer
    pub = MintClient(mint.url, shared_memory=False).publish(ADAPTER, trained, metadata={"step": 100})
    served = complete(client, ADAPTER, max_tokens=long_tokens)
    before_text = first.choices[0].text + "".join(c.choices[0].text for c in chunks)

    trained.save_pretrained(tmp_path / "new")  # for the reference process only
    new = reference(tiny_model, tmp_path / "new", prompt_ids, long_tokens)
    assert new["tokens"] != old["tokens"]
    assert served[0] == new["tokens"]
    assert served[1] == pytest.approx(new["logprobs"], abs=TOL)
    assert before_text == AutoTokenizer.from_pretrained(tiny_model).decode(old["tokens"])  # old revision to the end

    info = mint.adapter(ADAPTER)
    assert info["current"] == pub.revision == 2
    assert info["revisions"][-1]["metadata"] == {"step": 100}
    assert info["revisions"][-1]["content_digest"] == pub.digest

    # The same weights as a state dict with its LoraConfig are the same content: refused as a duplicate.
    from peft import get_peft_model_state_dict
    with pytest.raises(MintAPIError) as exc:
        mint.publish(ADAPTER, get_peft_model_state_dict(trained), lora_config=trained.peft_config["default"])
    assert exc.value.status == 409 and "already has this exact content" in exc.value.message


def test_stale_expected_revision_is_409_and_changes_nothing(mint, tiny_adapters):
    before = mint.adapter(ADAPTER)
    with pytest.raises(MintAPIError) as exc:
        mint.publish(ADAPTER, str(tiny_adapters["tiny-0001"]), expected_revision=before["latest"])
    assert exc.value.status == 409 and "already exists" in exc.value.message
    assert mint.adapter(ADAPTER) == before
    pub = mint.publish(ADAPTER, str(tiny_adapters["tiny-0001"]), expected_revision=before["latest"] + 1,
                       warm=False)
    assert pub.revision == before["latest"] + 1
    assert mint.wait_until_served(ADAPTER, pub.revision, timeout=120) < 120


def test_rollback_serves_the_previous_revision(client, mint, tiny_model, tiny_adapters, prompt_ids):
    current = mint.adapter(ADAPTER)["current"]
    pub = mint.rollback(ADAPTER, to=1)
    assert pub.revision == 1 and mint.adapter(ADAPTER)["current"] == 1
    ref = reference(tiny_model, tiny_adapters["tiny-0000"], prompt_ids)
    assert complete(client, ADAPTER)[0] == ref["tokens"]
    assert mint.rollback(ADAPTER, to=current).revision == current


def test_admin_calls_through_a_proxy_are_refused_without_an_admin_key(server, mint):
    before = mint.adapter(ADAPTER)
    for method, path in (("POST", "/mint/adapters/remote/x/revisions"), ("POST", f"/mint/adapters/{ADAPTER}/rollback"),
                         ("GET", f"/mint/adapters/{ADAPTER}"), ("GET", "/mint/status")):
        status, body = proxied_call(server.url, method, path)
        assert status == 403 and "--admin-api-key" in body["error"]["message"], (path, body)
        assert "x-forwarded-for" in body["error"]["message"]
    assert mint.adapter(ADAPTER) == before  # nothing changed
    # inference through the same proxy is not an admin call
    r = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, default_headers=PROXIED)
    assert r.completions.create(model=ADAPTER, prompt=PROMPT, max_tokens=1).choices


def test_trainer_callback_publishes_every_n_steps(client, mint, tiny_model, prompt_ids, tmp_path):
    import torch
    from transformers import Trainer, TrainingArguments

    from sglang_mint.client import MintPublishCallback

    model = peft_model(tiny_model, seed=9, r=4)
    rows = [{"input_ids": torch.tensor(prompt_ids), "labels": torch.tensor(prompt_ids)} for _ in range(8)]
    callback = MintPublishCallback(mint, "acme/trained", every_n_steps=1)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), max_steps=2, per_device_train_batch_size=4,
                             learning_rate=5e-2, save_strategy="no", report_to=[], use_cpu=True,
                             remove_unused_columns=False, logging_strategy="no")
    Trainer(model=model, args=args, train_dataset=rows, callbacks=[callback]).train()

    assert [p.revision for p in callback.published] == [1, 2]
    assert callback.published[0].digest != callback.published[1].digest  # the weights moved between steps
    info = mint.adapter("acme/trained")
    assert [r["metadata"]["global_step"] for r in info["revisions"]] == [1, 2]
    model.save_pretrained(tmp_path / "final")
    ref = reference(tiny_model, tmp_path / "final", prompt_ids)
    tokens, logprobs = complete(client, "acme/trained")
    assert tokens == ref["tokens"] and logprobs == pytest.approx(ref["logprobs"], abs=TOL)
