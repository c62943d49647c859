"""Under pressure and across tenants, end to end: real SGLang on CPU with a catalog.

- More distinct cold adapters in flight than GPU slots, with a host budget of about three
  adapters: no adapter in use is evicted (the scheduler survives), reads wait for room
  instead of growing memory, outputs equal HF+PEFT. Prefills are split into chunks of 16 tokens
  (--chunked-prefill-size): every adapter gets a long prompt, whose prefill is chunked, and a
  short one, whose prefill is not, at once.
- No request body reaches another adapter's prefix cache through ``extra_key``.
- ``lora_path`` goes through the catalog like ``model``: deleted and invented revisions 404.
- SGLang's LoRA registry holds only the names in flight, not every name ever seen.
- SGLang's LoRA drainer (--lora-drain-wait-threshold) drains running adapters for starving ones through
  the storm, and keeps only the adapters it drains, not every revision ever seen.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from safetensors.torch import load_file
from transformers import AutoTokenizer

from mint_status import mint_status
from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.tiny import write_tiny_adapters

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

N_ADAPTERS = 24
MAX_TOKENS = 24
# Long enough that --chunked-prefill-size 16 splits its prefill into chunks; SHORT_PROMPT is not.
PROMPT = ("the quick brown fox and the lazy dog serve token request batch layer rank expert kernel "
          "adapter base model serve token request batch layer rank expert kernel")
SHORT_PROMPT = "the quick brown fox"
CHUNK = 16
TOL = 1e-4
DRAIN_WAIT_S = 0.5  # far less than a cold adapter waits in the storm on this machine


@pytest.fixture(scope="module")
def catalog(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("pressure-catalog") / "catalog"
    cat = init_catalog(str(root), str(tiny_model))
    folders = write_tiny_adapters(tiny_model, tmp_path_factory.mktemp("pressure-adapters"), count=N_ADAPTERS,
                                  seed=11)
    for i, folder in enumerate(folders):
        cat.publish(f"t{i % 3}/a{i:02d}", str(folder))
    patterns = tmp_path_factory.mktemp("patterns")
    for adapter_id, extra in PATTERNED.items():
        cat.publish(adapter_id, str(write_patterned_adapter(tiny_model, patterns / adapter_id.replace("/", "-"),
                                                              **extra)))
    cat.close()
    return root


# PEFT settings SGLang itself ignores (one rank, one alpha/r scaling per adapter).
PATTERNED = {
    "p/patterns": {"rank_pattern": {"v_proj": 8, "down_proj": 2}, "alpha_pattern": {"o_proj": 32}},
    "p/rslora": {"use_rslora": True},
    "p/rslora-patterns": {"use_rslora": True, "rank_pattern": {"q_proj": 8}, "alpha_pattern": {"q_proj": 3}},
}


def write_patterned_adapter(model_dir, out, **settings):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sglang_mint.dev.tiny import randomize_lora

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "down_proj"], **settings)
    peft = get_peft_model(model, config)
    randomize_lora(peft, seed=len(str(settings)), b_std=0.05)
    peft.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_ids(catalog):
    with open_catalog(str(catalog)) as cat:
        return [row.adapter_id for row, _ in cat.list(prefix="t", limit=1000).items]


OBJECT_BYTES = 64 << 10  # SGLang's objects around one tiny adapter's tensors: measured about 48 KB


@pytest.fixture(scope="module")
def one_adapter(catalog, adapter_ids) -> int:
    """The most host memory one adapter holds: its tensors (read here from its files) and objects."""
    with open_catalog(str(catalog)) as cat:
        paths = [cat.resolve(a).local_path() for a in adapter_ids]
    tensors = [load_file(os.path.join(p, "adapter_model.safetensors")).values() for p in paths]
    return max(sum(t.numel() * t.element_size() for t in ts) for ts in tensors) + OBJECT_BYTES


@pytest.fixture(scope="module")
def budget(one_adapter):
    """About three adapters' worth of host memory."""
    return 3 * one_adapter


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def references(tiny_model, catalog, adapter_ids):
    """{(adapter id, prompt): HF+PEFT's answer} for both prompts."""
    tok = AutoTokenizer.from_pretrained(tiny_model)
    ids = {p: tok(p)["input_ids"] for p in (PROMPT, SHORT_PROMPT)}
    assert len(ids[PROMPT]) > CHUNK and len(ids[SHORT_PROMPT]) < CHUNK
    with open_catalog(str(catalog)) as cat:
        paths = {a: str(cat.resolve(a).local_path()) for a in adapter_ids}
    keys = [(a, p) for p in ids for a in adapter_ids]
    jobs = [{"adapter": paths[a], "prompt_ids": ids[p], "max_tokens": MAX_TOKENS} for a, p in keys]
    return dict(zip(keys, run_reference(sys.executable, tiny_model, jobs)))


def generate(server, body: dict) -> tuple[int, dict]:
    req = urllib.request.Request(server.url + "/generate", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=600) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def storm(server, adapter_ids):
    """Every adapter with both prompts, all at once: {(adapter id, prompt): (tokens, logprobs)}."""
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)

    def one(job):
        adapter_id, prompt = job
        r = client.completions.create(model=adapter_id, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0,
                                      logprobs=1, extra_body={"return_token_ids": True, "ignore_eos": True})
        c = r.choices[0]
        return c.model_extra["token_ids"], c.logprobs.token_logprobs

    jobs = [(a, p) for p in (PROMPT, SHORT_PROMPT) for a in adapter_ids]
    with ThreadPoolExecutor(len(jobs)) as pool:
        return dict(zip(jobs, pool.map(one, jobs)))


@pytest.fixture(scope="module")
def server(tiny_model, catalog, budget, tmp_path_factory, catalog_server):
    """Room for about three adapters and four slots, prefills in chunks of 16 tokens, starving adapters
    drained for: the storm below, then the tests of names."""
    with catalog_server(tiny_model, catalog, tmp_path_factory.mktemp("pressure-server"),
                        "--mint-host-cache-bytes", str(budget), "--max-loras-per-batch", "4",
                        "--chunked-prefill-size", str(CHUNK), "--lora-drain-wait-threshold", str(DRAIN_WAIT_S)) as srv:
        yield srv


def test_more_cold_adapters_than_memory_and_slots(server, adapter_ids, budget, one_adapter, references):
    for wave in range(2):
        outputs = storm(server, adapter_ids)
        for job, (tokens, logprobs) in outputs.items():
            assert tokens == references[job]["tokens"], (wave, job)
            assert logprobs == pytest.approx(references[job]["logprobs"], abs=TOL), (wave, job)
    chunks = [int(n) for n in re.findall(r"Prefill batch, .*?#new-token: (\d+)", server.log_path.read_text())]
    assert max(chunks) == CHUNK, chunks  # the long prompts' prefills were split
    [sched] = mint_status(server)["schedulers"]
    assert sched["evictions"] >= N_ADAPTERS, sched  # the budget really was exceeded many times over
    assert sched["host_peak_bytes"] <= budget + one_adapter, sched
    assert sched["adapters_in_use"] == 0 and sched["host_reserved_bytes"] == 0, sched
    assert sched["loading"] == 0 and sched["reads_waiting_for_room"] == 0, sched
    # an eviction drops the adapter without SGLang's logged free-memory reads, each an empty_cache on a GPU
    assert "LoRA adapter unloading starts" not in server.log_path.read_text()
    # SGLang's drainer kept an entry for every revision it saw (24 here, every publish of an RL loop in a day)
    # and walked them all at each prefill step: 16.6 ms a step after 100,000 (lora_drainer_bench)
    # one request alone: the drainer updates once more, and ends a drain whose adapter took no request since
    code, _ = generate(server, {"text": SHORT_PROMPT, "sampling_params": {"max_new_tokens": 1},
                                "lora_path": adapter_ids[0]})
    assert code == 200
    drainer = lora_drainer_state(server)
    assert drainer["drains"] > 0, drainer  # starving adapters were drained for, with the storm's answers exact
    assert drainer["adapters_kept"] == drainer["draining"] == 0, drainer  # nothing in flight: nothing drains


def lora_drainer_state(server) -> dict:
    with urllib.request.urlopen(server.url + "/server_info", timeout=60) as r:
        return json.loads(r.read())["internal_states"][0]["mint_lora_drainer"]


def test_extra_key_cannot_reach_another_adapters_prefix_cache(server, adapter_ids):
    adapter_id = adapter_ids[0]
    params = {"max_new_tokens": 1, "temperature": 0}
    body = {"text": PROMPT * 3, "sampling_params": params, "lora_path": f"{adapter_id}@1"}
    code, first = generate(server, body)
    assert code == 200, first
    code, again = generate(server, body)
    assert code == 200 and again["meta_info"]["cached_tokens"] > 0  # control: its own repeat hits the cache
    lora_id = f"mint:{adapter_id}@1"
    # The base model, naming the adapter's namespace: SGLang joins extra_key + lora_id as strings.
    code, out = generate(server, {"text": PROMPT * 3, "sampling_params": params, "extra_key": lora_id})
    assert code == 200, out
    assert out["meta_info"]["cached_tokens"] == 0


def test_lora_path_goes_through_the_catalog(server, adapter_ids, catalog):
    adapter_id = adapter_ids[2]
    params = {"max_new_tokens": 4, "temperature": 0}
    code, by_id = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": adapter_id})
    assert code == 200, by_id
    code, by_rev = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": f"{adapter_id}@1"})
    assert code == 200 and by_rev["output_ids"] == by_id["output_ids"]
    for name, want in ((f"{adapter_id}@99", 404), ("made/up@1", 404), ("made/up", 404), (f"{adapter_id}@x", 400),
                       (f"{adapter_id}@0", 400), ("../x@1", 400)):
        code, out = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": name})
        assert code == want, (name, code, out)
        assert name.split("@")[0] in json.dumps(out), out
    # A deleted adapter is a 404 everywhere within a second of the delete.
    victim = adapter_ids[3]
    code, _ = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": f"{victim}@1"})
    assert code == 200
    with open_catalog(str(catalog)) as cat:
        cat.delete(victim)
    time.sleep(1.0)
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=victim, prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="tiny", prompt=PROMPT, max_tokens=2, extra_body={"lora_path": f"{victim}@1"})
    for lora_path in (victim, f"{victim}@1"):
        code, out = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": lora_path})
        assert code == 404, (lora_path, out)


def test_registry_holds_only_names_in_flight(server, adapter_ids):
    params = {"max_new_tokens": 2, "temperature": 0}
    live = [f"{a}@1" for a in adapter_ids[4:]]
    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda a: generate(server, {"text": PROMPT, "sampling_params": params,
                                                          "lora_path": a})[0], live))
    assert codes == [200] * len(live)
    status = mint_status(server)
    assert status["registered_names"] == 0  # every name was dropped when its request ended
    assert status["stored_responses"] is None  # no --enable-response-store here
    code, _ = generate(server, {"text": PROMPT, "sampling_params": params, "lora_path": live[0]})
    assert code == 200  # and a dropped name is registered again on its next request


def test_rank_and_alpha_patterns_and_rslora_are_served_exactly(server, tiny_model, catalog, prompt_ids):
    ids = list(PATTERNED)
    with open_catalog(str(catalog)) as cat:
        jobs = [{"adapter": str(cat.resolve(a).local_path()), "prompt_ids": prompt_ids, "max_tokens": 8}
                for a in ids]
    refs = run_reference(sys.executable, tiny_model, jobs + [{"adapter": None, "prompt_ids": prompt_ids,
                                                              "max_tokens": 8}])
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    for adapter_id, ref in zip(ids, refs):
        r = client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=1,
                                      extra_body={"return_token_ids": True, "ignore_eos": True})
        assert r.choices[0].model_extra["token_ids"] == ref["tokens"], adapter_id
        assert r.choices[0].logprobs.token_logprobs == pytest.approx(ref["logprobs"], abs=TOL), adapter_id
        # Guard: the adapter moves the output, so matching HF+PEFT is not matching the base model.
        assert ref["logprobs"] != pytest.approx(refs[-1]["logprobs"], abs=10 * TOL), adapter_id
