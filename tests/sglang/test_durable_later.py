"""Publishing with durable=false (issue 22): served from memory at once, stored after the answer.

Real servers on CPU (--enable-mint, one SQLite catalog). The first holds every store back
(MINT_FAULT_DURABLE_DELAY_S), so its durable=false revisions are never stored, and is killed with
SIGKILL, as a machine is lost; the second opens the same catalog. The first also has an admin key,
and the admin calls' refusals without it are tested there first (issue 19: a server of its own
cost the suite a start). HF+PEFT in its own process is the
reference for what a revision serves.

- a durable=false revision is served by the next request and equals HF+PEFT (fp32, 1e-4);
- two trainers publishing to one adapter with compare-and-set: one wins, the other gets 409;
- after the kill, neither is served: the adapter serves its last stored revision, ``id@N`` of a lost
  one is 404 saying why, and ``mint catalog verify`` lists them as not durable, not as damage;
- without the delay, a durable=false revision (published with the client's async variant) is stored
  and marked durable shortly after the answer.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from test_catalog_serving import complete
from test_handoff import peft_model, proxied_call

from sglang_mint.catalog import open_catalog
from sglang_mint.client import MintAPIError, MintClient
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.server import SGLangServer
from sglang_mint.frontend.staged_revisions import remove_roots_of_gone_frontends, staging_root

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

TOL = 1e-4
ADAPTER = "rl/policy"
KEY = "K"


@pytest.fixture(scope="module")
def catalog(tiny_model, tiny_adapters, tmp_path_factory):
    from sglang_mint.catalog import init_catalog

    root = tmp_path_factory.mktemp("durable-later") / "catalog"
    with init_catalog(str(root), str(tiny_model)) as cat:
        cat.publish(ADAPTER, str(tiny_adapters["tiny-0001"]))
    return root


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    from transformers import AutoTokenizer

    from test_catalog_serving import PROMPT

    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


def server(tiny_model, catalog, log_dir, *flags: str, env=None) -> SGLangServer:
    log_dir.mkdir(parents=True, exist_ok=True)
    return SGLangServer(tiny_model, enable_mint=True, extra_args=["--mint-catalog", str(catalog), *flags],
                        log_path=log_dir / "server.log", python=sys.executable, env=env)


@pytest.fixture(scope="module")
def held(tiny_model, catalog, tmp_path_factory):
    """The first server: every durable=false store held back, and an admin key (the next test's)."""
    srv = server(tiny_model, catalog, tmp_path_factory.mktemp("held"), "--admin-api-key", KEY,
                 env={"MINT_FAULT_DURABLE_DELAY_S": "600"}).start()
    yield srv
    srv.stop()


def test_admin_key_is_required_when_set(held, tiny_adapters):
    with pytest.raises(MintAPIError) as exc:
        MintClient(held.url).publish("keyed/x", str(tiny_adapters["tiny-0002"]))
    assert exc.value.status == 401
    with pytest.raises(MintAPIError) as exc:
        MintClient(held.url, admin_api_key="wrong").adapter(ADAPTER)
    assert exc.value.status == 401
    pub = MintClient(held.url, admin_api_key=KEY).publish("keyed/x", str(tiny_adapters["tiny-0002"]))
    assert pub.revision == 1
    # with a key, callers elsewhere (through a proxy) are admitted by the key alone
    status, body = proxied_call(held.url, "GET", "/mint/adapters/keyed/x", {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["current"] == 1, body
    assert proxied_call(held.url, "GET", "/mint/status")[0] == 401


def test_server_info_gives_no_tenant_the_admin_key(held):
    """/server_info answers every caller the API key admits, a tenant through a proxy too; SGLang's answer
    carried --admin-api-key in clear three times (its admin_api_key, its launch_command, and each
    scheduler's internal state)."""
    status, info = proxied_call(held.url, "GET", "/server_info")
    assert status == 200 and info["admin_api_key"] == "<redacted>", info.get("admin_api_key")
    assert [state["admin_api_key"] for state in info["internal_states"]] == ["<redacted>"]
    assert KEY not in leaf_values(info) and "--admin-api-key <redacted>" in info["launch_command"]
    assert info["served_model_name"] and info["port"] == held.port  # what a router reads is left


def leaf_values(tree) -> list:
    if isinstance(tree, dict):
        return [leaf for value in tree.values() for leaf in leaf_values(value)]
    if isinstance(tree, list):
        return [leaf for value in tree for leaf in leaf_values(value)]
    return [tree]


def openai_client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


def test_durable_false_is_served_at_once_and_never_after_a_crash_before_it_is_stored(
        held, tiny_model, tiny_adapters, catalog, prompt_ids, tmp_path):
    try:
        mint, client = MintClient(held.url, admin_api_key=KEY), openai_client(held)
        assert mint._inbox() is not None  # this machine's server: the files go through shared memory
        trained = peft_model(tiny_model, seed=11)
        pub = mint.publish(ADAPTER, trained, durable=False, expected_revision=2)
        assert (pub.revision, mint.adapter(ADAPTER)["revisions"][-1]["durable"]) == (2, False)
        served = complete(client, ADAPTER)
        trained.save_pretrained(tmp_path / "r2")
        stored, new = run_reference(sys.executable, tiny_model, [  # revision 1 (stored), revision 2
            {"adapter": str(folder), "prompt_ids": prompt_ids, "max_tokens": 6}
            for folder in (tiny_adapters["tiny-0001"], tmp_path / "r2")])
        assert new["tokens"] != stored["tokens"]
        assert served[0] == new["tokens"] and served[1] == pytest.approx(new["logprobs"], abs=TOL)

        # Two trainers race for revision 3: compare-and-set lets one in.
        racers = [peft_model(tiny_model, seed=s) for s in (12, 13)]
        with ThreadPoolExecutor(2) as pool:
            tries = list(pool.map(lambda m: _publish_or_error(mint, m), racers))
        assert sorted(type(t).__name__ for t in tries) == ["MintAPIError", "Published"], tries
        lost = next(t for t in tries if isinstance(t, MintAPIError))
        assert lost.status == 409 and "revision 3" in lost.message
        assert mint.adapter(ADAPTER)["current"] == 3
    finally:
        os.killpg(held.proc.pid, signal.SIGKILL)  # before either blob is stored

    with open_catalog(str(catalog)) as cat:
        report = cat.verify()
    assert report["ok"] and report["not_durable"] == [f"{ADAPTER}@2", f"{ADAPTER}@3"], report
    killed_root = staging_root(held.port)
    assert len(os.listdir(os.path.join(killed_root, "staged"))) == 2  # in /dev/shm, with no one to remove them

    with server(tiny_model, catalog, tmp_path / "after") as after:
        assert not os.path.exists(killed_root)  # the next frontend removed what the killed one left
        client = openai_client(after)
        tokens, logprobs = complete(client, ADAPTER)
        assert tokens == stored["tokens"] and logprobs == pytest.approx(stored["logprobs"], abs=TOL)
        lost = httpx.post(f"{after.url}/generate", timeout=120, json={
            "text": "x", "lora_path": f"{ADAPTER}@3", "sampling_params": {"max_new_tokens": 1}})
        assert lost.status_code == 404 and "durable=false" in lost.text and "not stored" in lost.text, lost.text

        mint = MintClient(after.url)
        # the async variant: returns once a request for the new revision has been served
        pub = asyncio.run(mint.publish_served(ADAPTER, peft_model(tiny_model, seed=14), durable=False))
        assert pub.revision == 4 and complete(client, ADAPTER)[0] != stored["tokens"]

        # An RL step is loaded by its own requests: no warm request beside them, unless asked.
        def cold_loads():
            return sum(s["cold_loads"] for s in httpx.get(f"{after.url}/mint/status", timeout=30).json()["schedulers"])
        before, t0 = cold_loads(), time.monotonic()
        mint.publish("rl/warmed", peft_model(tiny_model, seed=15), durable=False, warm=True)
        while cold_loads() == before:
            assert time.monotonic() - t0 < 60, "warm=True did not load the revision within 60 s"
            time.sleep(0.05)
        took, before = time.monotonic() - t0, cold_loads()
        mint.publish("rl/unwarmed", peft_model(tiny_model, seed=16), durable=False)
        time.sleep(max(2.0, 5 * took))
        assert cold_loads() == before  # not warmed: its first request loads it
        complete(client, "rl/unwarmed")
        assert cold_loads() == before + 1
        deadline = time.monotonic() + 60
        while not mint.adapter(ADAPTER)["revisions"][-1]["durable"]:
            assert time.monotonic() < deadline, "revision 4 was not stored within 60 s"
            time.sleep(0.1)
        after_root = staging_root(after.port)
        assert os.path.isfile(os.path.join(after_root, "owner"))
    # A stopped server's root goes at its exit where SGLang lets Python exit (SGLang SIGKILLs its own
    # frontend when a child dies first, as with a signal to the whole group), else at the next start.
    remove_roots_of_gone_frontends(os.path.dirname(after_root), keep="")
    assert not os.path.exists(after_root)
    with open_catalog(str(catalog)) as cat:
        rev = cat.resolve(ADAPTER)
        assert (rev.revision, rev.durable) == (4, True)
        assert os.path.isfile(os.path.join(rev.local_path(), "adapter_model.safetensors"))
        assert cat.verify()["ok"]


def _publish_or_error(mint: MintClient, model):
    try:
        return mint.publish(ADAPTER, model, durable=False, expected_revision=3)
    except MintAPIError as exc:
        return exc
