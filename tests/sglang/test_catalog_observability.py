"""/mint/prefetch, /mint/status, Prometheus metrics and the host-memory budget, end to end."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from process_memory import scheduler_rss

from sglang_mint.catalog import open_catalog
from sglang_mint.catalog.synth import synth

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

N_ADAPTERS = 600
RANK = 8  # about 64 KiB per adapter: 600 of them would be about 38 MiB without the 2 MiB budget


@pytest.fixture(scope="module")
def server(small_budget_server, small_budget_catalog):
    """The session's server with a 2 MiB host budget and eight slots (test_catalog_serving.py shares it)."""
    with open_catalog(str(small_budget_catalog)) as cat:
        synth(cat, N_ADAPTERS, prefix="big/", rank=RANK, progress=False)
    return small_budget_server


def get(server, path):
    with urllib.request.urlopen(server.url + path, timeout=60) as r:
        return r.read().decode()


def post(server, path, body: bytes):
    req = urllib.request.Request(server.url + path, data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def sched_status(server):
    return json.loads(get(server, "/mint/status"))["schedulers"][0]


def metric(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def test_prefetch_loads_ahead_of_traffic(server):
    before = sched_status(server)["cold_loads"]
    code, body = post(server, "/mint/prefetch", json.dumps({"adapters": [
        "big/0000001", "big/0000002", "big/0000001", "nope/missing", "../bad"]}).encode())
    assert code == 200
    assert body["prefetching"] == ["big/0000001@1", "big/0000002@1"]
    assert set(body["errors"]) == {"nope/missing", "../bad"}
    assert "nope/missing" in body["errors"]["nope/missing"]
    deadline = time.monotonic() + 60
    while sched_status(server)["cold_loads"] < before + 2:
        assert time.monotonic() < deadline, "prefetch never loaded the adapters"
        time.sleep(0.2)
    hits = metric(get(server, "/metrics"), "sglang:mint_hits_total")
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0)
    client.completions.create(model="big/0000001", prompt="hello", max_tokens=2)
    assert metric(get(server, "/metrics"), "sglang:mint_hits_total") == hits + 1


def test_one_catalog_query_per_request_warm_or_cold(server):
    """The frontend resolves a request's adapter once; the record travels with the request, so
    the scheduler and its load workers never ask the catalog (issue 20: warm 1, cold 1)."""
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0)

    def counts():
        st = json.loads(get(server, "/mint/status"))
        return st["catalog_queries"], sum(s["catalog_queries"] for s in st["schedulers"]), \
            sum(s["cold_loads"] for s in st["schedulers"])

    seen = []
    for how in ("cold", "warm"):
        before = counts()
        client.completions.create(model="big/0000005", prompt="hello", max_tokens=2)
        seen.append((how, *(a - b for a, b in zip(counts(), before))))
    before = counts()  # SGLang's native API, naming the revision
    code, _ = post(server, "/generate", json.dumps({"text": "hello", "sampling_params": {"max_new_tokens": 2},
                                                    "lora_path": "big/0000005@1"}).encode())
    assert code == 200
    seen.append(("native", *(a - b for a, b in zip(counts(), before))))
    # (how, frontend queries, scheduler queries, cold loads): the first request really was cold
    assert seen == [("cold", 1, 0, 1), ("warm", 1, 0, 0), ("native", 1, 0, 0)]


@pytest.mark.parametrize("body", [b"not json", b'{"adapters": "big/0000001"}', b'{"adapters": [1, 2]}'])
def test_prefetch_rejects_bad_bodies(server, body):
    code, answer = post(server, "/mint/prefetch", body)
    assert code == 400 and "adapters" in answer["error"]["message"]  # OpenAI's error shape


def test_metrics_and_host_memory_under_churn(server):
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    rss_before = scheduler_rss(server)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: client.completions.create(model=f"big/{i:07d}", prompt="hello", max_tokens=2),
                      range(10, N_ADAPTERS)))
    st = sched_status(server)
    assert st["loading"] == 0
    assert st["cold_loads"] >= N_ADAPTERS - 10
    assert st["host_bytes"] <= server.host_budget_bytes + (128 << 10)  # the budget plus at most one adapter
    grown = scheduler_rss(server) - rss_before
    unbounded = (N_ADAPTERS - 10) * st["host_bytes"] / max(st["resident"], 1)
    assert grown < unbounded / 2, f"scheduler RSS grew {grown >> 20} MiB; all adapters are {int(unbounded) >> 20} MiB"

    text = get(server, "/metrics")
    for name in ("sglang:mint_cold_loads_total", "sglang:mint_cold_load_seconds_bucket",
                 "sglang:mint_queue_wait_seconds_count", "sglang:mint_evictions_total",
                 "sglang:mint_resolves_total", "sglang:mint_host_bytes", "sglang:mint_misses_total"):
        assert name in text, name
    assert metric(text, "sglang:mint_cold_loads_total") == st["cold_loads"]
    assert metric(text, "sglang:mint_evictions_total") == st["evictions"] > 0
    assert metric(text, "sglang:mint_host_bytes") == st["host_bytes"]


def lora_info_series(server) -> list:
    from prometheus_client.parser import text_string_to_metric_families

    families = [f for f in text_string_to_metric_families(get(server, "/metrics"))
                if f.name == "vllm:lora_requests_info"]
    return [s for f in families for s in f.samples]


def test_llm_d_lora_gauge_names_the_adapters_held(server):
    """vLLM's lora_requests_info, as llm-d's LoRA-affinity scorer reads it: one series whose
    labels name the adapters in the GPU pool (running) and those being read (waiting)."""
    t0 = time.time()
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    for i in (1, 2, 3):
        client.completions.create(model=f"big/{i:07d}", prompt="hello", max_tokens=2)
    [series] = lora_info_series(server)
    running = series.labels["running_lora_adapters"].split(",")
    assert {"big/0000001", "big/0000002", "big/0000003"} <= set(running)
    assert len(running) <= 8 and series.labels["max_lora"] == "8"
    assert t0 <= series.value <= time.time() + 1  # the time the state was recorded

    # A prefetch of many cold adapters: some scrape sees reads queued, named by adapter id.
    wanted = [f"big/{i:07d}" for i in range(100, 400)]
    code, _ = post(server, "/mint/prefetch", json.dumps({"adapters": wanted}).encode())
    assert code == 200
    seen_waiting: set[str] = set()
    deadline = time.monotonic() + 120
    while sched_status(server)["loading"] or sched_status(server)["reads_waiting_for_room"]:
        assert time.monotonic() < deadline
        [series] = lora_info_series(server)
        seen_waiting |= set(filter(None, series.labels["waiting_lora_adapters"].split(",")))
    assert seen_waiting and seen_waiting <= set(wanted)
    [series] = lora_info_series(server)
    assert series.labels["waiting_lora_adapters"] == ""


def families(server) -> dict:
    from prometheus_client.parser import text_string_to_metric_families

    return {f.name: f for f in text_string_to_metric_families(get(server, "/metrics"))}


def test_llm_d_load_state_series_name_gpu_and_host_residency(server):
    """vLLM's residency gauges, as llm-d's load-state scorer reads them: twelve adapters read into
    host memory (nineteen fit in the budget) and eight GPU slots, so some are level gpu and the rest cpu; the
    one served last is gpu; the load-time histogram counts catalog reads from disk and copies from
    host memory into a slot."""
    ids = [f"big/{i:07d}" for i in range(500, 512)]
    code, _ = post(server, "/mint/prefetch", json.dumps({"adapters": ids}).encode())
    assert code == 200
    deadline = time.monotonic() + 120
    while any(sched_status(server)[k] for k in ("loading", "reads_waiting_for_room", "adapters_in_use")):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    client.completions.create(model=ids[0], prompt="hello", max_tokens=2)
    got = families(server)
    status = sched_status(server)
    samples = got["vllm:lora_adapter_loaded"].samples
    loaded = {s.labels["adapter_name"]: s.labels for s in samples}
    assert loaded[ids[0]] == {"model_name": "tiny", "adapter_name": ids[0], "level": "gpu", "pinned": "false",
                              "rank": str(RANK)}
    gpu = sum(s.labels["level"] == "gpu" for s in samples)
    cpu = sum(s.labels["level"] == "cpu" for s in samples)
    assert 1 <= gpu <= 8 and cpu == status["resident"] - gpu >= len(ids) - 8, (gpu, cpu, status)
    assert {n for n, labels in loaded.items() if labels["level"] == "cpu"} & set(ids)
    assert got["vllm:max_gpu_lora_adapters"].samples[0].value == 8
    assert got["vllm:num_gpu_loaded_lora_adapters"].samples[0].value == gpu
    assert got["vllm:num_cpu_loaded_lora_adapters"].samples[0].value == cpu
    counts = {s.labels["source"]: s.value for s in got["vllm:lora_adapter_load_seconds"].samples
              if s.name.endswith("_count")}
    assert counts["disk"] == status["cold_loads"] and counts["host"] >= len(ids), counts


def http_series(server) -> list:
    fams = families(server)
    return [s for name in ("sglang:http_requests", "sglang:http_responses") if name in fams
            for s in fams[name].samples]


def test_http_metrics_keep_no_series_per_invented_path_or_method(server):
    """SGLang's HTTP metrics label each request with its route and its method. A path no route serves is
    counted as ``unmatched`` and a method HTTP does not define is refused (501) before it is counted, however
    many a client invents: each new value would otherwise add series that are never removed."""
    before = len(http_series(server))
    for i in range(15):
        assert server.status_of("GET", f"/no-such-path-{i}") == 404
        assert server.status_of(f"MINT{i}", "/v1/models") == 501
    assert server.status_of("GET", "/v1/models") == 200
    series = http_series(server)
    labels = [s.labels for s in series]
    assert not [lb for lb in labels if "no-such-path" in lb.get("endpoint", "")], labels
    assert not [lb for lb in labels if lb.get("method", "").startswith("MINT")], labels
    unmatched = [s.value for s in series if s.name == "sglang:http_requests_total"
                 and s.labels["endpoint"] == "unmatched" and s.labels["method"] == "GET"]
    assert unmatched and unmatched[0] >= 15
    assert any(lb.get("endpoint") == "/v1/models" for lb in labels)  # the metrics do count routes
    assert len(series) - before <= 8  # the unmatched route's and /v1/models' series at most, not three per invented path


@pytest.mark.parametrize("labels", [{"app": "bot"}, {"tenant": "acme", "model_name": "spoofed-" + "x" * 200}])
def test_custom_labels_the_server_does_not_allow_are_refused_and_it_keeps_serving(server, labels):
    """``/generate`` takes ``custom_labels`` from the body and SGLang's tokenizer metrics add them to each
    series' labels. A name the server was not started to allow (``--tokenizer-metrics-allowed-custom-labels``)
    raised in the loop that reads every answer, and that stopped the whole server; ``model_name`` took any
    value, a new series in every tokenizer metric for each one. Refused, 400 naming the label."""
    code, answer = post(server, "/generate", json.dumps({
        "text": "hello", "sampling_params": {"max_new_tokens": 2}, "custom_labels": labels}).encode())
    assert code == 400, answer
    name = [n for n in labels if n != "tenant"][0]
    assert "custom_labels" in answer["error"]["message"] and repr(name) in answer["error"]["message"]
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    assert client.completions.create(model="big/0000001", prompt="hello", max_tokens=2).choices[0].text is not None
    assert "spoofed-" not in get(server, "/metrics")


def test_a_custom_label_the_server_allows_is_counted_from_the_body_and_the_header(server):
    code, answer = post(server, "/generate", json.dumps({
        "text": "hello", "sampling_params": {"max_new_tokens": 2}, "custom_labels": {"tenant": "acme-7"}}).encode())
    assert code == 200, answer
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    client.completions.create(model="big/0000001", prompt="hello", max_tokens=2,
                              extra_headers={"x-custom-labels": json.dumps({"tenant": "beta-7", "other": "x"})})
    text = get(server, "/metrics")
    assert 'tenant="acme-7"' in text and 'tenant="beta-7"' in text  # SGLang drops the header's other names
