"""Two engines behind SGLang's gateway (SMG), one shared catalog, adapter affinity.

Real processes on loopback: ``smg launch --policy consistent_hashing`` with the
adapter-route middleware, two SGLang servers with ``--mint-gateway`` (they
register themselves), a catalog of 200 adapters both read, the official openai
client talking to the gateway with ``model=<adapter-id>``. The catalog is the
shared kind, as on many machines: metadata in PostgreSQL, blobs in an
S3-compatible server (moto); each engine gets only ``--mint-catalog
postgresql://...`` and the AWS_* variables, and keeps its own views and blob cache. A publish
and a rollback made by another process are served on an engine's next request.

An adapter served by one engine only is cold-loaded once: with a host budget
that never evicts, the two engines' cold loads add up to the number of distinct
adapters requested exactly when no adapter was served by both.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from transformers import AutoTokenizer

from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.synth import synth
from sglang_mint.cli import main as cli_main
from sglang_mint.dev.server import SGLangServer, free_port
from sglang_mint.gateway.smg import SMGGateway
from sglang_mint.gateway.smg_ring import SMGRing
from sglang_mint.usage.ledger import requests_by_adapter
from openai_jobs import answer_models
from test_catalog_serving import PROMPT, complete, references

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

N_SYNTH = 197  # + 3 PEFT adapters = 200
N_REQUESTS = 500
ZIPF_S = 1.1


@pytest.fixture(scope="module")
def catalog(tiny_model, tiny_adapters, postgres_server, moto_server, tmp_path_factory):
    """postgresql://postgres:<pw>@127.0.0.1:54xxx/gw_<hex> with blobs at s3://mint-gw-<hex>/catalog."""
    name = uuid.uuid4().hex[:12]
    url = postgres_server.create_database(f"gw_{name}")
    moto_server.client().create_bucket(Bucket=f"mint-gw-{name}")
    env = pytest.MonkeyPatch()  # this process's own view of the catalog (the references read blobs through it)
    env.setenv("MINT_CATALOG_CACHE", str(tmp_path_factory.mktemp("gw-test-cache")))
    with init_catalog(url, str(tiny_model), blobs=f"s3://mint-gw-{name}/catalog") as cat:
        for adapter, folder in tiny_adapters.items():
            cat.publish(f"acme/{adapter}", str(folder))
        synth(cat, N_SYNTH, prefix="synth/", rank=1, progress=False)
    yield url
    env.undo()
    postgres_server.admin(f"DROP DATABASE gw_{name} WITH (FORCE)")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    with SMGGateway(free_port(), log_path=tmp_path_factory.mktemp("smg") / "smg.log") as gw:
        gw.install_adapter_route("tiny", warm=False)  # warmed while the engines start
        yield gw


@pytest.fixture(scope="module")
def engines(tiny_model, catalog, gateway, tmp_path_factory):
    logs = tmp_path_factory.mktemp("gw-engines")
    # the AWS_* variables that point at moto come from the moto_server fixture's environment
    servers = [SGLangServer(tiny_model, extra_args=["--mint-catalog", catalog, "--mint-gateway", gateway.url,
                                                    "--mint-catalog-cache", str(logs / f"cache{i}"),
                                                    "--mint-usage-dir", str(logs / "usage"),
                                                    "--max-loras-per-batch", "8"],
                            log_path=logs / f"engine{i}.log", python=sys.executable) for i in range(2)]
    errors = []

    def start(server):
        try:
            server.start()
        except Exception as exc:  # reported below, with both logs
            errors.append(exc)

    warming = gateway.warm_adapter_route_in_background()
    threads = [threading.Thread(target=start, args=(s,)) for s in servers]
    [t.start() for t in threads]
    [t.join() for t in threads]
    try:
        assert not errors, errors
        warming.result()
        gateway.wait_for_workers({s.url for s in servers}, timeout=30)
        yield servers
    finally:
        for s in servers:
            s.stop()


@pytest.fixture(scope="module")
def client(gateway, engines):
    return openai.OpenAI(base_url=gateway.openai_url, api_key="none", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def prompt_ids(tiny_model):
    return AutoTokenizer.from_pretrained(tiny_model)(PROMPT)["input_ids"]


def scheduler_status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status", timeout=30) as r:
        return json.loads(r.read())["schedulers"][0]


def zipf_ids(n: int, seed: int) -> list[str]:
    names = [f"acme/tiny-000{i}" for i in range(3)] + [f"synth/{k:07d}" for k in range(N_SYNTH)]
    weights = [1.0 / (k + 1) ** ZIPF_S for k in range(len(names))]
    return random.Random(seed).choices(names, weights=weights, k=n)


def test_adapter_ids_through_the_gateway_match_hf_peft(client, tiny_model, catalog, prompt_ids):
    ids = ["acme/tiny-0000", "acme/tiny-0001", "acme/tiny-0002", "synth/0000007"]
    refs = references(tiny_model, catalog, ids, prompt_ids)
    for adapter_id in ids:
        tokens, logprobs = complete(client, adapter_id)
        assert tokens == refs[adapter_id]["tokens"], adapter_id
        assert logprobs == pytest.approx(refs[adapter_id]["logprobs"], abs=1e-4)
    assert complete(client, "tiny:acme/tiny-0001")[0] == refs["acme/tiny-0001"]["tokens"]
    assert complete(client, "tiny")[0]  # the base model


def test_answers_through_the_gateway_name_the_model_the_client_sent(client):
    """The middleware rewrites ``model`` to the base model for SMG's routing; the answer still
    names what the client sent, whole and streamed, as an engine answers when called directly."""
    for model in ("acme/tiny-0000", "tiny:acme/tiny-0001", "tiny", "tiny:"):
        assert answer_models(client, model) == [model] * 4
    assert answer_models(client, "tiny", extra_body={"lora_path": "acme/tiny-0002"}) == ["tiny"] * 4


def test_bad_ids_get_the_engines_errors_and_the_gateway_keeps_serving(client):
    with pytest.raises(openai.NotFoundError) as exc:
        complete(client, "acme/never-published")
    assert "acme/never-published" in str(exc.value)
    with pytest.raises(openai.BadRequestError) as exc:
        complete(client, "../etc/passwd")
    assert "'..'" in str(exc.value)
    assert complete(client, "acme/tiny-0000")[0]


def test_zipf_requests_each_adapter_on_one_engine(client, engines, tiny_model, catalog, prompt_ids):
    before = [scheduler_status(s) for s in engines]
    ids = zipf_ids(N_REQUESTS, seed=1)

    def one(adapter_id):
        return adapter_id, complete(client, adapter_id, max_tokens=2)

    with ThreadPoolExecutor(8) as pool:
        served = list(pool.map(one, ids))  # every request succeeded (an error raises here)
    # what they served is what the adapters they name produce: a sample against HF+PEFT
    sample = sorted(set(ids))[::max(1, len(set(ids)) // 12)]
    refs = references(tiny_model, catalog, sample, prompt_ids, max_tokens=2)
    checked = 0
    for adapter_id, (tokens, logprobs) in served:
        if adapter_id in refs:
            assert tokens == refs[adapter_id]["tokens"], adapter_id
            assert logprobs == pytest.approx(refs[adapter_id]["logprobs"], abs=1e-4), adapter_id
            checked += 1
    base = complete(client, "tiny", max_tokens=2)[1]
    assert checked >= len(sample)
    assert any(refs[a]["logprobs"] != pytest.approx(base, abs=1e-3) for a in sample)  # not the base model
    after = [scheduler_status(s) for s in engines]
    loads = [a["cold_loads"] - b["cold_loads"] for a, b in zip(after, before)]
    assert all(a["evictions"] == 0 and a["loading"] == 0 for a in after)
    requested = set(ids) - {"acme/tiny-0000", "acme/tiny-0001", "acme/tiny-0002", "synth/0000007"}  # loaded above
    # each adapter cold-loaded on exactly one engine, and both engines took a share
    assert sum(loads) == len(requested), (loads, len(requested))
    # (how evenly depends on where the engines' ports put them on the ring: gateway_bench measures it)
    assert min(after[0]["requests"] - before[0]["requests"], after[1]["requests"] - before[1]["requests"]) > 0


def test_rebalance_command_plans_from_the_engines_usage(engines, gateway, capsys):
    """``mint gateway rebalance --dry-run`` reads the rates the engines wrote (the zipf storm above)
    and plans shares within the bound; it moves adapters whenever the ring's own shares are not
    (engine ports differ per run: the ring's max/mean was 1.01 to 1.39 over gateway_bench runs).
    It may move some when they are: the busiest adapters are dealt out to the least loaded engine
    (test_adapter_placement.py; a fresh clone's ring at 1.023 moved three)."""
    usage_dir = engines[0].log_path.parent / "usage"
    # Each engine appends what it counted every 2 s: read once the ledger holds the storm and stays
    # the same over longer than that, so the three reads below see the same rows.
    deadline, counted = time.monotonic() + 60, -1
    while (now := sum(requests_by_adapter(usage_dir).values())) != counted or now < N_REQUESTS:
        assert time.monotonic() < deadline, f"the ledger never settled: {counted} then {now} requests"
        counted = now
        time.sleep(2.5)
    rates = requests_by_adapter(usage_dir)
    assert sum(rates.values()) >= N_REQUESTS
    assert cli_main(["gateway", "rebalance", "--gateway", gateway.url, "--base-model", "tiny", "--usage-dir",
                     str(usage_dir), "--load-factor", "1.05", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["dry_run"] and plan["adapters"] == len(rates)
    assert plan["planned_max_over_mean"] <= 1.05
    ring = SMGRing([s.url for s in engines])
    on_ring = [sum(n for a, n in rates.items() if ring.home(a) == s.url) for s in engines]
    if max(on_ring) * 2 / sum(on_ring) > 1.05:
        assert plan["moved"]
    assert all(ring.home(key) != ring.home(adapter) for adapter, key in plan["moved"].items())
    assert len(gateway_modules(gateway)) == 1  # a dry run changes nothing
    # The same plan from each engine's GET /mint/usage: both engines write to one folder here, so both
    # answer with every row, and the ledger is counted once (twice would be 2 x the requests).
    assert cli_main(["gateway", "rebalance", "--gateway", gateway.url, "--base-model", "tiny",
                     "--usage-from-engines", "--load-factor", "1.05", "--dry-run"]) == 0
    from_engines = json.loads(capsys.readouterr().out)
    assert from_engines["requests_counted"] == plan["requests_counted"] == sum(rates.values())
    assert from_engines["moved"] == plan["moved"] and from_engines["usage_unread"] == []
    assert cli_main(["gateway", "rebalance", "--gateway", gateway.url, "--base-model", "tiny", "--usage-dir",
                     str(usage_dir), "--window-minutes", "0", "--dry-run"]) == 2
    assert "no adapter requests" in capsys.readouterr().err


def test_publish_on_one_engine_is_served_by_both_at_once(engines, tiny_model, catalog, tiny_adapters, prompt_ids):
    """The first request to each engine after the publish answer gets the new revision: no engine
    serves a cached older one, and none needs a retry (how long a publish takes: bench/)."""
    adapter_id = "acme/tiny-0000"
    refs = references(tiny_model, catalog, [adapter_id, "acme/tiny-0001"], prompt_ids)
    refs_v2 = refs["acme/tiny-0001"]
    assert refs_v2["tokens"] != refs[adapter_id]["tokens"]  # the new revision is told from the old
    folder = tiny_adapters["tiny-0001"]
    files = {name: (folder / name).read_bytes() for name in ("adapter_config.json", "adapter_model.safetensors")}
    direct = [openai.OpenAI(base_url=s.openai_url, api_key="none", max_retries=0) for s in engines]
    publish(engines[0].url, adapter_id, files)
    seen = [complete(c, adapter_id)[0] for c in direct]
    assert seen == [refs_v2["tokens"]] * 2


def publish(url: str, adapter_id: str, files: dict[str, bytes]) -> dict:
    boundary = "mintgatewaytest"
    parts = []
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/mint/adapters/{adapter_id}/revisions", data=body, method="POST",
                                 headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 201
        return json.loads(r.read())


def test_publish_and_rollback_by_another_process_are_served_next(engines, catalog, tiny_model, tiny_adapters,
                                                                  postgres_server, prompt_ids, tmp_path):
    """An engine given only ``--mint-catalog postgresql://...``: a publish and a rollback made by
    another process through the catalog are each served on the engine's very next request, equal
    to HF+PEFT; its /mint/status and log never show the password; its views are its own."""
    engine = engines[0]
    client = openai.OpenAI(base_url=engine.openai_url, api_key="none", max_retries=0, timeout=120)
    adapter_id = "acme/pg-bot"
    revisions = {"acme/tiny-0000": 1, "acme/tiny-0001": 1}  # the same files as this adapter's two revisions
    refs = references(tiny_model, catalog, list(revisions), prompt_ids, revisions=revisions)
    first, second = refs["acme/tiny-0000"], refs["acme/tiny-0001"]
    assert first["logprobs"] != pytest.approx(second["logprobs"], abs=1e-4)  # the two revisions are told apart

    def served_equals(ref):
        tokens, logprobs = complete(client, adapter_id)
        return tokens == ref["tokens"] and logprobs == pytest.approx(ref["logprobs"], abs=1e-4)

    with open_catalog(catalog, cache_dir=str(tmp_path / "publisher")) as cat:  # another node
        assert cat.publish(adapter_id, str(tiny_adapters["tiny-0000"])).revision == 1
        assert served_equals(first)
        assert cat.publish(adapter_id, str(tiny_adapters["tiny-0001"])).revision == 2
        assert served_equals(second)  # the very next request
        assert cat.rollback(adapter_id).revision == 1
        assert served_equals(first)  # and a rollback, the same way
    with urllib.request.urlopen(engine.url + "/mint/status", timeout=30) as r:
        assert json.load(r)["catalog"].startswith("postgresql://postgres:***@127.0.0.1:")
    views = Path(engine.args[engine.args.index("--mint-catalog-cache") + 1]) / "views"
    assert any(views.iterdir())  # the engine keeps its own views
    assert postgres_server.password not in engine.log_path.read_text()


def served_by(engines, client, adapter_id: str) -> int:
    """The index of the engine that served one request for ``adapter_id`` (nothing else in flight)."""
    before = [scheduler_status(s)["requests"] for s in engines]
    complete(client, adapter_id, max_tokens=1)
    grew = [i for i, (s, b) in enumerate(zip(engines, before)) if scheduler_status(s)["requests"] > b]
    assert len(grew) == 1, grew
    return grew[0]


def test_rebalance_moves_whole_adapters_where_the_placement_says(client, gateway, engines):
    """SMG routes as SMGRing computes, and after ``rebalance`` each adapter the placement moved is
    served by the engine it names, every request of it; the others stay on their ring home."""
    urls = [s.url for s in engines]
    ring = SMGRing(urls)
    # the ring's shares depend on the engines' ports (max/mean up to 1.59): draw from enough names
    names = [f"synth/{k:07d}" for k in range(100, N_SYNTH) if k != 150]
    on_first = [a for a in names if ring.home(a) == urls[0]][:6]
    on_second = [a for a in names if ring.home(a) == urls[1]][:2]
    assert len(on_first) == 6 and len(on_second) == 2, (len(on_first), len(on_second))
    # before: every adapter where the ring puts it (this is plain consistent hashing)
    for adapter in on_first + on_second:
        assert urls[served_by(engines, client, adapter)] == ring.home(adapter), adapter
    modules_before = gateway_modules(gateway)
    rates = dict.fromkeys(on_first + on_second, 10.0)  # 60 on the first engine's home, 20 on the second's
    placement = gateway.rebalance(rates, load_factor=1.0)
    assert placement.routing_keys
    assert placement.planned_load == {urls[0]: 40.0, urls[1]: 40.0}
    for adapter in on_first + on_second:
        for _ in range(2):
            assert urls[served_by(engines, client, adapter)] == placement.engine_of[adapter], adapter
    for adapter in placement.routing_keys:
        assert placement.engine_of[adapter] != ring.home(adapter)  # moved off its home, and served there
    assert complete(client, "synth/0000150")[0]  # an adapter the placement does not know: the ring
    assert len(gateway_modules(gateway)) == len(modules_before) == 1  # the old middleware was replaced


def gateway_modules(gateway) -> list:
    with urllib.request.urlopen(gateway.url + "/wasm", timeout=10) as r:
        return json.loads(r.read())["modules"]


def test_kill_9_one_engine_during_traffic(client, gateway, engines):
    survivor, victim = engines
    ids = zipf_ids(300, seed=2)
    outcomes: list[str] = []
    lock = threading.Lock()

    def one(adapter_id):
        try:
            client.completions.create(model=adapter_id, prompt=PROMPT, max_tokens=2, temperature=0)
            result = "ok"
        except openai.APIError as exc:
            result = f"{type(exc).__name__}: {exc}"
        with lock:
            outcomes.append(result)

    concurrency = 8
    with ThreadPoolExecutor(concurrency) as pool:
        futures = [pool.submit(one, a) for a in ids]
        while len(outcomes) < 60:
            time.sleep(0.05)
        os.killpg(victim.proc.pid, signal.SIGKILL)  # the engine and its gateway watcher: a lost machine
        killed_at = len(outcomes)
        [f.result() for f in futures]
    failed = [o for o in outcomes if o != "ok"]
    assert len(failed) <= concurrency, failed[:3]
    assert killed_at < len(outcomes)  # traffic went on after the kill
    gateway.wait_for_workers({survivor.url}, timeout=10)  # SMG's health checks dropped it
    # every adapter, the victim's included, is now served by the survivor
    for adapter_id in sorted(set(ids))[:20]:
        assert complete(client, adapter_id, max_tokens=2)[0]
