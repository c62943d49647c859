"""The lora_requests_info state files and their merge (lora_info.py), as pure logic."""

from __future__ import annotations

from types import SimpleNamespace

from sglang_mint.residency.lora_requests_info import (MAX_WAITING_NAMES, LoraInfoCollector, adapter_name, merged_labels,
                                                      read_states, state_path, write_state)
from sglang_mint.residency.lora_requests_info import MAX_CPU_SERIES, LoraInfoWriter, residency_families
from sglang_mint.lora_id import parse_lora_id
from sglang_mint.residency.host_lru import HostLRU


def test_adapter_name_is_what_requests_put_in_model():
    refs = {"0f" * 16: SimpleNamespace(lora_name="stock-sql")}
    assert adapter_name("mint:acme/bot@3", refs) == "acme/bot"
    assert adapter_name("0f" * 16, refs) == "stock-sql"
    assert adapter_name(None, refs) is None  # the base model's slot
    assert adapter_name(object(), refs) is None  # SGLang's EMPTY_SLOT


def test_dp_ranks_merge_into_one_series():
    states = [{"time": 10.0, "max_lora": 4, "running": ["a", "b"], "waiting": ["c", "d"]},
              {"time": 12.5, "max_lora": 4, "running": ["c"], "waiting": ["e", "d"]}]
    labels, value = merged_labels(states)
    assert labels == {"max_lora": "8", "running_lora_adapters": "a,b,c", "waiting_lora_adapters": "d,e"}
    assert value == 12.5
    assert merged_labels([]) is None


def _fake(slots, reading=(), wanted=(), resident=(), pinned=(), configs=None):
    pool = SimpleNamespace(buffer_id_to_uid=list(slots))
    manager = SimpleNamespace(memory_pool=pool, lora_refs={}, configs=configs or {})
    lru = HostLRU(1 << 30, pinned=pinned, group_of=lambda lora_id: parse_lora_id(lora_id)[0])
    for key in resident:  # coldest first
        lru.loaded(key, 1000)
    residency = SimpleNamespace(wanted=dict.fromkeys(wanted), reading=set(reading), read_seq=0, installed_total=0,
                                loader=SimpleNamespace(failed_total=0), lru=lru, requests=0)
    return manager, residency


def test_writer_writes_on_change_only(tmp_path):
    manager, residency = _fake([None, "mint:acme/bot@3", object()], wanted=[f"mint:w/{i}@1" for i in range(300)])
    path = state_path(str(tmp_path), 0)
    writer = LoraInfoWriter(path, 3, manager, residency)
    writer.refresh()
    [state] = read_states(str(tmp_path))
    assert state["running"] == ["acme/bot"] and state["max_lora"] == 3
    assert len(state["waiting"]) == MAX_WAITING_NAMES and state["waiting"][0] == "w/0"
    write_state(path, {**state, "running": ["tampered"]})
    writer.refresh()  # nothing moved: no write
    assert read_states(str(tmp_path))[0]["running"] == ["tampered"]
    manager.memory_pool.buffer_id_to_uid[2] = "mint:acme/faq@1"
    writer.refresh()
    assert read_states(str(tmp_path))[0]["running"] == ["acme/bot", "acme/faq"]


def test_collector_renders_vllm_format(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest

    write_state(state_path(str(tmp_path), 0), {"time": 1764500000.5, "max_lora": 8, "running": ["acme/bot"],
                                               "waiting": []})
    registry = CollectorRegistry()
    registry.register(LoraInfoCollector(str(tmp_path)))
    text = generate_latest(registry).decode()
    assert ('vllm:lora_requests_info{max_lora="8",running_lora_adapters="acme/bot",waiting_lora_adapters=""} '
            '1.7645000005e+09') in text


def test_residency_series_name_gpu_slots_then_host_memory_most_recent_first(tmp_path):
    resident = [f"mint:h/{i:04d}@1" for i in range(MAX_CPU_SERIES + 10)] + ["mint:acme/bot@3"]
    configs = {"mint:acme/bot@3": SimpleNamespace(r=8), "mint:h/0001@1": SimpleNamespace(r=4)}
    manager, residency = _fake([None, "mint:acme/bot@3"], resident=resident, pinned=["h/0001"], configs=configs)
    residency.lru.touched("mint:h/0001@1")  # the most recent after the GPU one
    writer = LoraInfoWriter(state_path(str(tmp_path), 0), 2, manager, residency, model_name="tiny")
    writer.refresh()
    [state] = read_states(str(tmp_path))
    gpu, first_cpu = state["loaded"][0], state["loaded"][1]
    assert gpu == {"name": "acme/bot", "level": "gpu", "pinned": False, "rank": 8}
    assert first_cpu == {"name": "h/0001", "level": "cpu", "pinned": True, "rank": 4}
    assert len(state["loaded"]) == 1 + MAX_CPU_SERIES  # bounded: the coldest have no series
    assert state["cpu_total"] == MAX_CPU_SERIES + 10 and state["model_name"] == "tiny"
    # A hit reorders the host memory: written again, at most once a second.
    residency.lru.touched("mint:h/0000@1")
    residency.requests += 1
    writer._written -= 2.0
    writer.refresh()
    assert read_states(str(tmp_path))[0]["loaded"][1]["name"] == "h/0000"


def test_residency_gauges_merge_dp_ranks_and_parse_as_prometheus_text(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    ranks = [{"time": 1.0, "max_lora": 4, "running": ["a"], "waiting": [], "model_name": "tiny", "cpu_total": 1,
              "loaded": [{"name": "a", "level": "gpu", "pinned": False, "rank": 8},
                         {"name": "b", "level": "cpu", "pinned": False, "rank": 8}]},
             {"time": 2.0, "max_lora": 4, "running": ["b"], "waiting": [], "model_name": "tiny", "cpu_total": 0,
              "loaded": [{"name": "b", "level": "gpu", "pinned": True, "rank": 8}]}]
    for i, state in enumerate(ranks):
        write_state(state_path(str(tmp_path), i), state)
    registry = CollectorRegistry()
    registry.register(LoraInfoCollector(str(tmp_path)))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    loaded = {s.labels["adapter_name"]: s.labels for s in families["vllm:lora_adapter_loaded"].samples}
    assert loaded == {"a": {"model_name": "tiny", "adapter_name": "a", "level": "gpu", "pinned": "false", "rank": "8"},
                      "b": {"model_name": "tiny", "adapter_name": "b", "level": "gpu", "pinned": "true", "rank": "8"}}
    value = {name: families[name].samples[0].value for name in
             ("vllm:num_gpu_loaded_lora_adapters", "vllm:num_cpu_loaded_lora_adapters", "vllm:max_gpu_lora_adapters")}
    assert value == {"vllm:num_gpu_loaded_lora_adapters": 2, "vllm:num_cpu_loaded_lora_adapters": 1,
                     "vllm:max_gpu_lora_adapters": 8}
    assert [f.name for f in residency_families([])] == ["vllm:lora_adapter_loaded"]  # no scheduler yet: no counts
