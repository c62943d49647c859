"""Catalog serving with tensor parallelism (TP=2) and data parallelism (DP=2), on CPU.

Real SGLang, two ranks on this machine's two cores. A storm of 200 requests over
50 cold catalog adapters, with a host budget of about four adapters so reads,
evictions and admissions interleave differently on each rank; every answer must
equal HF+PEFT (fp32, 1e-4). Before the ranks agreed on residency, the TP=2
storm crashed the server (one rank admitted a request the other did not).
MoE-expert LoRA under TP, EP and DP: test_parallel_moe.py.
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
from test_catalog_observability import metric
from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.tiny import write_tiny_adapters

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"
N_ADAPTERS = 50
STORM = 200
TOKENS = 4
TOL = 1e-4
HOST_BUDGET = "300KB"  # about four rank-4 adapters of the tiny Llama per rank


@pytest.fixture(scope="module")
def catalog(tiny_model, tiny_adapters, tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel") / "catalog"
    with init_catalog(str(root), str(tiny_model)) as cat:
        synth(cat, N_ADAPTERS, prefix="s/", rank=4, progress=False)
        cat.publish("acme/bot", str(tiny_adapters["tiny-0000"]))
        own = write_tiny_adapters(tiny_model, tmp_path_factory.mktemp("corrupt"), count=1, seed=31)[0]
        broken = cat.publish("broken/truncated", str(own))
    blob = Path(cat.blobs.local_path(broken.files["adapter_model.safetensors"]))
    data = blob.read_bytes()
    blob.chmod(0o644)
    blob.write_bytes(data[: len(data) // 2])
    return root


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


@pytest.fixture(scope="module")
def storm_ids():
    rng = random.Random(0)
    weights = [1.0 / (k + 1) ** 1.1 for k in range(N_ADAPTERS)]
    return [f"s/{k:07d}" for k in rng.choices(range(N_ADAPTERS), weights=weights, k=STORM - N_ADAPTERS)] + [
        f"s/{k:07d}" for k in range(N_ADAPTERS)]  # every adapter at least once


@pytest.fixture(scope="module")
def references(tiny_model, catalog, prompt_ids):
    with open_catalog(str(catalog)) as cat:
        ids = [f"s/{k:07d}" for k in range(N_ADAPTERS)] + ["acme/bot"]
        paths = [cat.resolve(a).local_path() for a in ids]
    jobs = [{"adapter": p, "prompt_ids": prompt_ids, "max_tokens": TOKENS} for p in paths + [None]]
    refs = dict(zip(ids + [None], run_reference(sys.executable, tiny_model, jobs)))
    base = refs.pop(None)  # the storms would prove nothing if the adapters did not move the output
    assert all(refs[a]["logprobs"] != pytest.approx(base["logprobs"], abs=TOL) for a in ids)
    return refs


def complete(client, model, max_tokens=TOKENS):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=max_tokens, temperature=0, logprobs=1,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    return r.choices[0].model_extra["token_ids"], r.choices[0].logprobs.token_logprobs


def storm(client, ids, references):
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda a: (a, complete(client, a)), ids))
    for adapter_id, (tokens, logprobs) in answers:
        assert tokens == references[adapter_id]["tokens"], adapter_id
        assert logprobs == pytest.approx(references[adapter_id]["logprobs"], abs=TOL), adapter_id


def wait_until_snapshots_idle(server, ranks: int, timeout_s: float = 30.0) -> None:
    """Wait until SGLang's load snapshots (GET /v1/loads, what the DP dispatcher reads) show every
    rank with nothing running or waiting."""
    deadline = time.monotonic() + timeout_s
    while True:
        with urllib.request.urlopen(server.url + "/v1/loads") as r:
            loads = json.loads(r.read())["loads"]
        if len(loads) == ranks and all(x["num_running_reqs"] == x["num_waiting_reqs"] == 0 for x in loads):
            return
        assert time.monotonic() < deadline, f"the ranks' load snapshots never showed them idle: {loads}"
        time.sleep(0.02)


def openai_client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


# -- tensor parallelism (class-scoped servers: one server at a time on two cores) --------
def parallel_server(catalog_server, tiny_model, catalog, log_dir, *flags):
    return catalog_server(tiny_model, catalog, log_dir, *flags, "--mint-host-cache-bytes", HOST_BUDGET)


@pytest.fixture(scope="class")
def tp_server(tiny_model, catalog, tmp_path_factory, catalog_server):
    with parallel_server(catalog_server, tiny_model, catalog, tmp_path_factory.mktemp("tp2"), "--tp-size", "2",
                         "--enable-metrics") as srv:
        yield srv


class TestTensorParallel:
    def test_tp2_storm_over_cold_adapters_equals_hf_peft(self, tp_server, storm_ids, references):
        storm(openai_client(tp_server), storm_ids, references)
        scheduler = mint_status(tp_server)["schedulers"][0]
        assert scheduler["evictions"] > 20  # the budget forced reads and evictions throughout
        ranks = scheduler["ranks"]
        assert [r["tp_rank"] for r in ranks] == [0, 1]
        assert ranks[0]["host_bytes"] == ranks[1]["host_bytes"] > 0  # the same adapters, counted alike
        # one copy per node: rank 1 maps rank 0's, so the node holds the bytes once
        assert scheduler["node_shared"] and scheduler["node_host_bytes"] == {ranks[0]["host"]: ranks[0]["host_bytes"]}
        shared = Path(f"/dev/shm/sglang-mint-{tp_server.port}-dp0")
        assert shared.is_dir() and not list(shared.iterdir())  # names go once every rank has mapped them
        # one count per engine, not one per rank: SGLang's collector sums every process's counters
        with urllib.request.urlopen(tp_server.url + "/metrics") as r:
            text = r.read().decode()
        counted = [metric(text, f"sglang:mint_{name}_total") for name in ("requests", "cold_loads", "evictions")]
        assert counted == [scheduler["requests"], scheduler["cold_loads"], scheduler["evictions"]]
        assert metric(text, "sglang:mint_host_bytes") == ranks[0]["host_bytes"]

    def test_tp2_corrupt_adapter_fails_alone(self, tp_server, references):
        client = openai_client(tp_server)
        with ThreadPoolExecutor(8) as pool:
            good = [pool.submit(complete, client, f"s/{k:07d}") for k in range(6)]
            bad = [pool.submit(complete, client, "broken/truncated") for _ in range(3)]
            for f in bad:
                with pytest.raises(openai.APIStatusError) as exc:
                    f.result()
                assert exc.value.status_code == 422 and "could not be loaded" in str(exc.value)
            for k, f in enumerate(good):
                assert f.result()[0] == references[f"s/{k:07d}"]["tokens"]
        assert complete(client, "acme/bot")[0] == references["acme/bot"]["tokens"]  # still serving

    def test_tp2_publish_and_rollback_mid_stream(self, tp_server, tiny_model, catalog, tiny_adapters, prompt_ids):
        client = openai_client(tp_server)
        long_tokens = 32
        jobs = [{"adapter": str(tiny_adapters[name]), "prompt_ids": prompt_ids, "max_tokens": long_tokens}
                for name in ("tiny-0000", "tiny-0002")]
        old, new = run_reference(sys.executable, tiny_model, jobs)
        stream = iter(client.completions.create(model="acme/bot", prompt=PROMPT, max_tokens=long_tokens,
                                                temperature=0, stream=True, extra_body={"ignore_eos": True}))
        first = next(stream)
        with open_catalog(str(catalog)) as cat:
            cat.publish("acme/bot", str(tiny_adapters["tiny-0002"]))
        assert complete(client, "acme/bot", long_tokens)[0] == new["tokens"]
        text = first.choices[0].text + "".join(c.choices[0].text for c in stream)
        assert text == AutoTokenizer.from_pretrained(tiny_model).decode(old["tokens"])  # its revision to the end
        with open_catalog(str(catalog)) as cat:
            cat.rollback("acme/bot")
        assert complete(client, "acme/bot", long_tokens)[0] == old["tokens"]


# -- data parallelism ------------------------------------------------------------
@pytest.fixture(scope="class")
def dp_server(tiny_model, catalog, tmp_path_factory, catalog_server):
    with parallel_server(catalog_server, tiny_model, catalog, tmp_path_factory.mktemp("dp2"), "--dp-size", "2") as srv:
        yield srv


class TestDataParallel:
    def test_dp2_a_tenant_cannot_pin_a_rank(self, dp_server):
        """A request's DP rank is a router's field (sglang/router_fields.py): without the admin key it is
        refused, in the body and in SGLang's X-Data-Parallel-Rank header."""
        client = openai_client(dp_server)
        for body, headers in [({"routed_dp_rank": 1}, None), (None, {"X-Data-Parallel-Rank": "1"})]:
            with pytest.raises(openai.BadRequestError) as exc:
                client.completions.create(model="s/0000003", prompt="hi", max_tokens=2, extra_body=body,
                                          extra_headers=headers)
            assert "routed_dp_rank: a router's field" in str(exc.value)

    def test_dp2_storm_over_cold_adapters_equals_hf_peft(self, dp_server, storm_ids, references):
        storm(openai_client(dp_server), storm_ids, references)
        schedulers = mint_status(dp_server)["schedulers"]
        assert len(schedulers) == 2 and all(s["requests"] > 0 for s in schedulers)  # both ranks served

    def test_dp2_requests_for_one_adapter_stay_on_one_rank(self, dp_server, references):
        client = openai_client(dp_server)
        # The dispatcher sees the ranks' loads through SGLang's snapshots, which lag: a rank's last
        # snapshot from the storm can still count requests that ended (residency/affinity.py). Start
        # once every rank's snapshot says idle, as the dispatcher will then read it.
        wait_until_snapshots_idle(dp_server, ranks=2)
        # by scheduler process: /mint/status lists the schedulers in the order they answered
        before = {s["pid"]: s["requests"] for s in mint_status(dp_server)["schedulers"]}
        for _ in range(12):  # one at a time: load never pushes it elsewhere
            assert complete(client, "s/0000003")[0] == references["s/0000003"]["tokens"]
        after = {s["pid"]: s["requests"] for s in mint_status(dp_server)["schedulers"]}
        assert len(before) == 2 and after.keys() == before.keys()
        assert sorted(after[pid] - before[pid] for pid in before) == [0, 12]
