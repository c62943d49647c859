"""The lora_requests_info state files and their merge (lora_info.py), as pure logic."""

from __future__ import annotations

from types import SimpleNamespace

from sglang_mint.residency.lora_requests_info import (MAX_WAITING_NAMES, LoraInfoCollector, adapter_name, merged_labels,
                                                      read_states, state_path, write_state)
from sglang_mint.residency.lora_requests_info import LoraInfoWriter


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


def _fake(slots, reading=(), wanted=()):
    pool = SimpleNamespace(buffer_id_to_uid=list(slots))
    manager = SimpleNamespace(memory_pool=pool, lora_refs={})
    residency = SimpleNamespace(wanted=dict.fromkeys(wanted), reading=set(reading), read_seq=0,
                                installed_total=0, loader=SimpleNamespace(failed_total=0))
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
