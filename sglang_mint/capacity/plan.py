"""A capacity plan: GPU memory per engine, then the fewest engines whose simulated figures meet the SLO.

An engine count meets the SLO when, on every engine, the cold TTFT p99 (``warm_ttft_s`` plus the
simulated wait for the adapter, simulate.py) is within ``cold_ttft_p99_s``; the load link, the load
workers and PCIe are busy less than all the time (at 100% or more a queue grows without bound, however
long the run); and, when ``engine_rps`` is given, the engine serves at most that many requests a second. The search simulates 1, 2, 4, ... engines until one meets the SLO, then bisects between
the last that did not and it: more engines split the catalog (affinity) or the rate (round-robin)
further, so a count that meets the SLO is taken to stay met above.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from sglang_mint.capacity.hardware import BYTES_PER_VALUE, GPU, ModelSpec
from sglang_mint.capacity.simulate import EngineModel, Simulation, Traffic, percentile
from sglang_mint.capacity.sizes import AdapterSize, weight_bytes
from sglang_mint.errors import MintError

AUTO_GPUS = (1, 2, 4, 8)
KV_SHARE_MIN = 0.2  # auto GPUs per engine leave at least this share of usable HBM to the KV cache


@dataclass(frozen=True)
class Hardware:
    """One engine's hardware and serving settings."""
    gpu: GPU
    gpus_per_engine: int | None  # None: the fewest of AUTO_GPUS that hold weights and LoRA pool
    host_cache_bytes: int  # --mint-host-cache-bytes
    load_workers: int  # --mint-load-workers
    source: str  # "disk" or "s3"
    source_bytes_per_s: float
    read_overhead_s: float  # mean per read, before its bytes move: open, parse, build tensors (S3: + first byte)
    gpu_slots: int  # --max-loras-per-batch
    mem_fraction: float  # share of HBM for weights, LoRA pool and KV cache (SGLang's --mem-fraction-static)
    pinned_top: int = 0
    read_overhead_fixed: bool = False


@dataclass(frozen=True)
class SLO:
    cold_ttft_p99_s: float
    warm_ttft_s: float = 0.0  # TTFT of a request whose adapter is in a GPU slot
    engine_rps: float | None = None
    max_engines: int = 64


def gpu_memory(spec: ModelSpec, adapter: AdapterSize, hw: Hardware) -> dict:
    """Bytes per GPU: weights and LoRA pool split over the engine's GPUs (tensor parallel), and
    what is left of the usable share for the KV cache."""
    gpus = hw.gpus_per_engine or auto_gpus(spec, adapter, hw)
    usable = hw.gpu.hbm_bytes * hw.mem_fraction
    weights = weight_bytes(spec.config, spec.base, BYTES_PER_VALUE[spec.weight_dtype]) / gpus
    pool = hw.gpu_slots * adapter.gpu_bytes / gpus
    return {"gpus_per_engine": gpus, "hbm_bytes": hw.gpu.hbm_bytes, "usable_bytes": int(usable),
            "weight_bytes": int(weights), "lora_pool_bytes": int(pool), "kv_cache_bytes": int(usable - weights - pool),
            "fits": usable - weights - pool > 0}


def auto_gpus(spec: ModelSpec, adapter: AdapterSize, hw: Hardware) -> int:
    for gpus in AUTO_GPUS:
        mem = gpu_memory(spec, adapter, replace(hw, gpus_per_engine=gpus))
        if mem["kv_cache_bytes"] >= KV_SHARE_MIN * mem["usable_bytes"]:
            return gpus
    return AUTO_GPUS[-1]


def engine_model(adapter: AdapterSize, hw: Hardware, gpus: int) -> EngineModel:
    return EngineModel(
        host_budget_bytes=hw.host_cache_bytes, adapter_file_bytes=adapter.file_bytes,
        adapter_host_bytes=adapter.host_bytes, adapter_reserve_bytes=adapter.reserve_bytes, adapter_gpu_bytes=adapter.gpu_bytes // gpus,
        gpu_slots=hw.gpu_slots, load_workers=hw.load_workers, read_overhead_s=hw.read_overhead_s,
        source_bytes_per_s=hw.source_bytes_per_s, pcie_bytes_per_s=hw.gpu.pcie_bytes_per_s,
        pinned_top=hw.pinned_top, read_overhead_fixed=hw.read_overhead_fixed)


def evaluate(traffic: Traffic, model: EngineModel, engines: int, routing: str, slo: SLO) -> dict:
    """One simulated engine count: the figures of the plan's table and what misses the SLO."""
    sim = Simulation(traffic, model, engines, routing)
    counts = sim.run()
    window = sim.window_s or 1.0
    transfer_s = model.adapter_file_bytes / model.source_bytes_per_s
    copy_s = model.adapter_gpu_bytes / model.pcie_bytes_per_s
    requests = sum(c.requests for c in counts)
    waits = [w + slo.warm_ttft_s for c in counts for w in c.cold_waits]
    per_engine = []
    for c in counts:
        p99 = percentile(c.cold_waits, 0.99)
        per_engine.append({
            "requests_per_s": c.requests / window, "hit_rate": c.hits / c.requests if c.requests else None,
            "cold_loads_per_s": c.cold_loads / window, "load_bytes_per_s": c.cold_loads * model.adapter_file_bytes / window,
            "link_utilization": c.cold_loads * transfer_s / window,
            "worker_utilization": c.cold_loads * (model.read_overhead_s + transfer_s) / model.load_workers / window,
            "pcie_utilization": (c.requests - c.gpu_hits) * copy_s / window,
            "cold_ttft_p99_s": None if p99 is None else p99 + slo.warm_ttft_s,
            "in_flight_p99": percentile(c.in_flight, 0.99) or 0, "evictions": c.evictions})
    busiest = {k: max(e[k] or 0 for e in per_engine) for k in per_engine[0] if k != "hit_rate"}
    row = {
        "engines": engines, "requests": requests, "window_s": window,
        "hit_rate": sum(c.hits for c in counts) / requests if requests else None,
        "gpu_slot_hit_rate": sum(c.gpu_hits for c in counts) / requests if requests else None,
        "cold_loads": sum(c.cold_loads for c in counts),
        "cold_loads_per_s": sum(c.cold_loads for c in counts) / window,
        "load_bytes_per_s": sum(c.cold_loads for c in counts) * model.adapter_file_bytes / window,
        "cold_ttft_p50_s": percentile(waits, 0.5), "cold_ttft_p99_s": percentile(waits, 0.99),
        "read_p50_s": percentile([r for c in counts for r in c.read_seconds], 0.5),
        "read_p99_s": percentile([r for c in counts for r in c.read_seconds], 0.99),
        "busiest_engine": busiest, "per_engine": per_engine,
        "resident_adapters": max(len(e.lru) for e in sim.engines),
        "host_capacity_adapters": model.host_budget_bytes // model.adapter_host_bytes,
    }
    row["misses_slo"] = slo_misses(row, slo)
    return row


def slo_misses(row: dict, slo: SLO) -> list[str]:
    """Why an engine count does not meet the SLO, worst engine first; empty when it does."""
    b, out = row["busiest_engine"], []
    if b["cold_ttft_p99_s"] > slo.cold_ttft_p99_s:
        out.append(f"cold TTFT p99 {b['cold_ttft_p99_s'] * 1e3:,.0f} ms > {slo.cold_ttft_p99_s * 1e3:,.0f} ms")
    if b["link_utilization"] >= 1:
        out.append(f"load link {b['link_utilization']:.0%} busy")
    if b["worker_utilization"] >= 1:
        out.append(f"load workers {b['worker_utilization']:.0%} busy")
    if b["pcie_utilization"] >= 1:
        out.append(f"PCIe {b['pcie_utilization']:.0%} busy")
    if slo.engine_rps is not None and b["requests_per_s"] > slo.engine_rps:
        out.append(f"{b['requests_per_s']:,.0f} req/s on one engine > {slo.engine_rps:,.0f}")
    return out


def engines_for_slo(traffic: Traffic, model: EngineModel, routing: str, slo: SLO,
                    engines: int | None = None) -> tuple[list[dict], int | None]:
    """(every row simulated, by engine count; the fewest engines that meet the SLO or None).
    With ``engines`` given, only that count is simulated."""
    rows: dict[int, dict] = {}

    def meets(n: int) -> bool:
        if n not in rows:
            rows[n] = evaluate(traffic, model, n, routing, slo)
        return not rows[n]["misses_slo"]

    if engines is not None:
        ok = meets(engines)
        return list(rows.values()), engines if ok else None
    low, high = 0, 1  # low misses (0 engines: nothing served), high is the candidate
    while not meets(high):
        low = high
        if high >= slo.max_engines:
            return [rows[n] for n in sorted(rows)], None
        high = min(2 * high, slo.max_engines)
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (low, mid) if meets(mid) else (mid, high)
    return [rows[n] for n in sorted(rows)], high


def check_inputs(traffic: Traffic, hw: Hardware) -> None:
    if traffic.catalog_size <= 0 or traffic.requests <= traffic.warmup_requests:
        raise MintError("the catalog needs adapters and the stream more requests than its warm-up")
    if hw.load_workers <= 0 or hw.gpu_slots <= 0 or not (0 < hw.mem_fraction <= 1):
        raise MintError("load workers and GPU slots must be positive, the HBM fraction in (0, 1]")
    if traffic.catalog_size > 20_000_000:
        raise MintError("catalogs up to 20,000,000 adapters (the sampler holds one weight per adapter)")
    if hw.source_bytes_per_s <= 0 or hw.gpu.pcie_bytes_per_s <= 0 or hw.read_overhead_s < 0:
        raise MintError("bandwidths must be positive and the read overhead not negative")
    if (traffic.rate is not None and traffic.rate <= 0) or (traffic.clients is not None and traffic.clients <= 0) \
            or traffic.request_seconds < 0 or traffic.zipf_s < 0:
        raise MintError("the rate or clients must be positive, request seconds and the zipf exponent not negative")
