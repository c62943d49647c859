"""Serving any catalog adapter: background cold loads, revisions live, bad adapters fail alone.

Real SGLang on CPU with --enable-mint --mint-catalog, the official openai client.
"""

from __future__ import annotations

import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from mint_status import mint_status
from sglang_mint.catalog import open_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.dev.reference import run_reference

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"
N_SYNTH = 10_000
TOL = 1e-4


def write_rank16_adapter(model_dir, out: Path) -> Path:
    """A valid PEFT adapter whose rank (16) is above the server's --max-lora-rank (8)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32),
                           LoraConfig(r=16, lora_alpha=16, target_modules=["q_proj"]))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def catalog(tiny_model, tiny_adapters, small_budget_catalog, tmp_path_factory):
    root = small_budget_catalog
    cat = open_catalog(str(root))
    for name, folder in tiny_adapters.items():
        cat.publish(f"acme/{name}", str(folder))
    synth(cat, N_SYNTH, prefix="synth/", rank=1, progress=False)
    # A corrupt file on disk: the weights blob of a valid import, truncated afterwards. Its own
    # content (seed 7): blobs are content-addressed, so a copy of another adapter would share it.
    from sglang_mint.dev.tiny import write_tiny_adapters

    own = write_tiny_adapters(tiny_model, tmp_path_factory.mktemp("broken"), count=2, seed=7)[1]
    broken = cat.publish("broken/truncated", str(own))
    blob = Path(broken.local_path()) / "adapter_model.safetensors"
    data = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(data[: len(data) // 2])
    cat.publish("broken/rank16", str(write_rank16_adapter(tiny_model, tmp_path_factory.mktemp("r16") / "a")))
    cat.publish("gone/soon", str(tiny_adapters["tiny-0002"]))
    cat.close()
    return root


@pytest.fixture(scope="module")
def server(catalog, small_budget_server):
    """The session's server with a 2 MiB host budget (about two hundred rank-1 adapters) and eight slots."""
    return small_budget_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


def complete(client, model, max_tokens=6):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=1,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    return r.choices[0].model_extra["token_ids"], r.choices[0].logprobs.token_logprobs


def references(model_dir, catalog_root, adapter_ids, prompt_ids, max_tokens=6, revisions=None):
    with open_catalog(str(catalog_root)) as cat:
        revs = [cat.get_revision(a, revisions[a]) if revisions else cat.resolve(a) for a in adapter_ids]
        paths = [str(rev.local_path()) for rev in revs]
    jobs = [{"adapter": p, "prompt_ids": prompt_ids, "max_tokens": max_tokens} for p in paths]
    return dict(zip(adapter_ids, run_reference(sys.executable, model_dir, jobs)))


def test_cold_catalog_adapters_match_hf_peft(client, tiny_model, catalog, prompt_ids):
    ids = ["acme/tiny-0000", "acme/tiny-0001", "acme/tiny-0002", "synth/0000007", "synth/0009999"]
    refs = references(tiny_model, catalog, ids, prompt_ids)
    for adapter_id in ids:
        tokens, logprobs = complete(client, adapter_id)
        assert tokens == refs[adapter_id]["tokens"], adapter_id
        assert logprobs == pytest.approx(refs[adapter_id]["logprobs"], abs=TOL)
    # served:<id> names the same adapter
    assert complete(client, "tiny:acme/tiny-0001")[0] == refs["acme/tiny-0001"]["tokens"]


def test_unknown_and_deleted_adapters_are_404(client, catalog):
    with pytest.raises(openai.NotFoundError) as exc:
        complete(client, "acme/never-published")
    assert "acme/never-published" in str(exc.value)
    assert complete(client, "gone/soon")  # served while it exists
    with open_catalog(str(catalog)) as cat:
        cat.delete("gone/soon")
    with pytest.raises(openai.NotFoundError) as exc:
        complete(client, "gone/soon")
    assert "gone/soon" in str(exc.value)


@pytest.mark.parametrize("adapter_id, reason", [
    ("broken/truncated", "could not be loaded"),
    ("broken/rank16", "rank 16"),
])
def test_bad_adapter_fails_alone(server, client, adapter_id, reason):
    before = usage_totals(server, adapter_id)
    with ThreadPoolExecutor(8) as pool:
        good = [pool.submit(complete, client, f"acme/tiny-000{i % 3}") for i in range(6)]
        bad = [pool.submit(complete, client, adapter_id) for _ in range(2)]
        for f in bad:
            with pytest.raises(openai.APIStatusError) as exc:
                f.result()
            assert exc.value.status_code == 422
            assert adapter_id in str(exc.value) and reason in str(exc.value)
        assert all(len(f.result()[0]) == 6 for f in good)
    # the usage ledger counts both as errors (the server refused them), not as cancelled, and bills
    # no tokens: SGLang swaps a refused prompt for one token it runs and drops
    deadline = time.monotonic() + 30  # appended every 2 s
    while (after := usage_totals(server, adapter_id))["requests"] - before["requests"] < 2:
        assert time.monotonic() < deadline, (before, after)
        time.sleep(0.5)
    assert {k: after[k] - before[k] for k in after} == {
        "requests": 2, "errors": 2, "cancelled": 0, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0}


def usage_totals(server, adapter_id: str) -> dict:
    with urllib.request.urlopen(f"{server.url}/mint/usage?adapter={adapter_id}", timeout=60) as r:
        return json.loads(r.read())["totals"]


def test_publish_and_rollback_mid_stream(client, tiny_model, catalog, tiny_adapters, prompt_ids):
    adapter_id = "acme/tiny-0000"
    long_tokens = 48
    refs_v1 = references(tiny_model, catalog, [adapter_id], prompt_ids, max_tokens=long_tokens)
    # A request in flight: its first token has streamed, so it resolved its revision already.
    stream = client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=long_tokens, temperature=0,
                                       stream=True, extra_body={"ignore_eos": True})
    chunks = iter(stream)
    first = next(chunks)
    with open_catalog(str(catalog)) as cat:
        v2 = cat.publish(adapter_id, str(tiny_adapters["tiny-0002"]))
    after = complete(client, adapter_id, max_tokens=long_tokens)
    before_text = first.choices[0].text + "".join(c.choices[0].text for c in chunks)
    refs_v2 = references(tiny_model, catalog, [adapter_id], prompt_ids, max_tokens=long_tokens,
                         revisions={adapter_id: v2.revision})
    assert refs_v2[adapter_id]["tokens"] != refs_v1[adapter_id]["tokens"]
    assert after[0] == refs_v2[adapter_id]["tokens"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    assert before_text == tokenizer.decode(refs_v1[adapter_id]["tokens"])  # the old revision, to the end
    with open_catalog(str(catalog)) as cat:
        cat.rollback(adapter_id)
    assert complete(client, adapter_id, max_tokens=long_tokens)[0] == refs_v1[adapter_id]["tokens"]
    # the revision rolled back from, pinned the way a 400 for `model: id@N` says: the served name and lora_path
    pinned = f"{adapter_id}@{v2.revision}"
    with pytest.raises(openai.BadRequestError) as exc:
        complete(client, pinned)
    assert f"lora_path {pinned!r}" in str(exc.value)
    r = client.completions.create(model="tiny", prompt=PROMPT, max_tokens=long_tokens, temperature=0,
                                  extra_body={"return_token_ids": True, "ignore_eos": True, "lora_path": pinned})
    assert r.choices[0].model_extra["token_ids"] == refs_v2[adapter_id]["tokens"]


def test_zipf_storm_over_the_catalog(client, server, tiny_model, catalog, prompt_ids):
    rng = random.Random(0)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(N_SYNTH)]
    ids = [f"synth/{k:07d}" for k in rng.choices(range(N_SYNTH), weights=weights, k=1000)]  # 407 distinct: 2x what host memory holds
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda a: complete(client, a, max_tokens=4), ids))
    assert all(len(tokens) == 4 for tokens, _ in results)
    sample = sorted(set(ids), key=ids.index)[:3] + sorted(set(ids), key=ids.index)[-2:]
    refs = references(tiny_model, catalog, sample, prompt_ids, max_tokens=4)
    by_id = dict(zip(ids, results))
    for adapter_id in sample:
        assert by_id[adapter_id][0] == refs[adapter_id]["tokens"], adapter_id

    st = mint_status(server)["schedulers"][0]
    assert st["loading"] == 0  # nothing stuck
    assert st["cold_loads"] >= len(set(ids))
    assert st["evictions"] > 0
    one_adapter = 64 << 10  # generous bound on one tiny adapter's bytes
    assert st["host_bytes"] <= st["host_budget_bytes"] + one_adapter
