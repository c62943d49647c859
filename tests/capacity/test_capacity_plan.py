"""The engines-for-SLO search and the GPU memory of an engine."""

import pytest

from sglang_mint.capacity.hardware import GPUS, model_spec
from sglang_mint.capacity.plan import SLO, Hardware, engines_for_slo, evaluate, gpu_memory, slo_misses
from sglang_mint.capacity.simulate import EngineModel, Traffic
from sglang_mint.capacity.sizes import adapter_size, resolve_targets

# Reads are bound by their 20 ms of overhead on one worker (50 a second at most); each engine
# holds 20 adapters. More engines split the 400-adapter catalog and the 200 req/s between them.
ENGINE = EngineModel(host_budget_bytes=20, adapter_file_bytes=1, adapter_host_bytes=1, adapter_reserve_bytes=1, adapter_gpu_bytes=0,
                     gpu_slots=8, load_workers=1, read_overhead_s=0.02, source_bytes_per_s=1e12,
                     pcie_bytes_per_s=1e12, read_overhead_fixed=True)
TRAFFIC = Traffic(catalog_size=400, zipf_s=0.8, requests=20_000, warmup_requests=5_000, request_seconds=0.01,
                  rate=200.0)
SLO_100MS = SLO(cold_ttft_p99_s=0.1, max_engines=16)


def test_the_search_finds_the_fewest_engines_that_meet_the_slo():
    rows, needed = engines_for_slo(TRAFFIC, ENGINE, "affinity", SLO_100MS)
    assert needed is not None and needed > 2
    by_count = {r["engines"]: r for r in rows}
    assert by_count[needed]["misses_slo"] == [] and by_count[needed - 1]["misses_slo"]
    # every count below it misses, simulated one by one
    assert all(evaluate(TRAFFIC, ENGINE, n, "affinity", SLO_100MS)["misses_slo"] for n in range(1, needed))
    assert len(rows) < needed + 2  # doubling then bisecting, not every count


def test_no_count_up_to_the_limit_gives_none():
    rows, needed = engines_for_slo(TRAFFIC, ENGINE, "affinity", SLO(cold_ttft_p99_s=0.001, max_engines=4))
    assert needed is None and [r["engines"] for r in rows] == [1, 2, 4]


def test_one_given_engine_count_is_the_only_row():
    rows, needed = engines_for_slo(TRAFFIC, ENGINE, "affinity", SLO_100MS, engines=1)
    assert needed is None and len(rows) == 1
    assert rows[0]["busiest_engine"]["worker_utilization"] > 1
    assert "load workers" in " ".join(rows[0]["misses_slo"])


def test_slo_misses_name_each_limit():
    busiest = {"cold_ttft_p99_s": 2.0, "link_utilization": 1.5, "worker_utilization": 0.5,
               "pcie_utilization": 0.1, "requests_per_s": 300.0}
    misses = slo_misses({"busiest_engine": busiest}, SLO(cold_ttft_p99_s=1.0, engine_rps=250))
    assert misses == ["cold TTFT p99 2,000 ms > 1,000 ms", "load link 150% busy", "300 req/s on one engine > 250"]
    assert slo_misses({"busiest_engine": {**busiest, "cold_ttft_p99_s": 0.5, "link_utilization": 0.9}},
                      SLO(cold_ttft_p99_s=1.0)) == []


def hardware(gpus=None, slots=8):
    return Hardware(gpu=GPUS["h100"], gpus_per_engine=gpus, host_cache_bytes=1 << 30, load_workers=2, source="disk",
                    source_bytes_per_s=3e9, read_overhead_s=0.005, gpu_slots=slots, mem_fraction=0.85)


@pytest.mark.parametrize("model, gpus", [("llama-3-8b", 1), ("llama-3-70b", 4), ("qwen3-30b-a3b", 2)])
def test_gpus_per_engine_hold_weights_and_pool_with_room_for_kv(model, gpus):
    spec = model_spec(model)
    adapter = adapter_size(spec.base, 16, resolve_targets(spec.base, ["all"]), 2, 2)
    mem = gpu_memory(spec, adapter, hardware())
    assert mem["gpus_per_engine"] == gpus and mem["fits"]
    assert mem["kv_cache_bytes"] >= 0.2 * mem["usable_bytes"]
    fewer = gpu_memory(spec, adapter, hardware(gpus // 2)) if gpus > 1 else None
    assert fewer is None or fewer["kv_cache_bytes"] < 0.2 * fewer["usable_bytes"]


def test_llama_3_70b_does_not_fit_one_h100():
    spec = model_spec("llama-3-70b")
    adapter = adapter_size(spec.base, 16, resolve_targets(spec.base, ["all"]), 2, 2)
    mem = gpu_memory(spec, adapter, hardware(1))
    assert not mem["fits"] and mem["weight_bytes"] > 80e9
