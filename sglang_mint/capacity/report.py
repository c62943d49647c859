"""The plan as one document: built from ``mint plan``'s options, and rendered as a table."""

from __future__ import annotations

from dataclasses import asdict, replace

from sglang_mint.capacity.hardware import BYTES_PER_VALUE, gpu, model_spec
from sglang_mint.capacity.plan import SLO, Hardware, check_inputs, engine_model, engines_for_slo, gpu_memory
from sglang_mint.capacity.simulate import Traffic
from sglang_mint.capacity.sizes import adapter_size, resolve_targets
from sglang_mint.config import parse_bytes
from sglang_mint.errors import MintError

DEFAULT_RATE = 100.0


def make_plan(args) -> dict:
    spec = model_spec(args.model)
    targets = resolve_targets(spec.base, args.targets)
    adapter = adapter_size(spec.base, args.rank, targets, BYTES_PER_VALUE[args.adapter_dtype],
                           BYTES_PER_VALUE[spec.pool_dtype])
    card = gpu(args.gpu)
    if args.hbm_gb:
        card = replace(card, hbm_bytes=int(args.hbm_gb * 1e9))
    if args.pcie_gbps:
        card = replace(card, pcie_bytes_per_s=args.pcie_gbps * 1e9)
    s3 = args.source == "s3"
    hw = Hardware(gpu=card, gpus_per_engine=args.gpus_per_engine, host_cache_bytes=parse_bytes(args.host_cache),
                  load_workers=args.load_workers, source=args.source,
                  source_bytes_per_s=(args.s3_gbps if s3 else args.disk_gbps) * 1e9,
                  read_overhead_s=(args.read_overhead_ms + (args.s3_latency_ms if s3 else 0)) / 1e3,
                  gpu_slots=args.gpu_slots, mem_fraction=args.mem_fraction, pinned_top=args.pin_top,
                  read_overhead_fixed=args.fixed_read_overhead)
    rate = None if args.clients is not None else (DEFAULT_RATE if args.rate is None else args.rate)
    warmup = args.requests // 2 if args.warmup_requests is None else args.warmup_requests
    traffic = Traffic(catalog_size=args.catalog, zipf_s=args.zipf, requests=args.requests, warmup_requests=warmup,
                      request_seconds=args.request_seconds, rate=rate, clients=args.clients, seed=args.seed)
    check_inputs(traffic, hw)
    memory = gpu_memory(spec, adapter, hw)
    if not memory["fits"]:
        raise MintError(f"{spec.base.name}: {memory['weight_bytes'] / 1e9:,.1f} GB of weights and "
                        f"{memory['lora_pool_bytes'] / 1e9:,.1f} GB of LoRA pool per GPU exceed "
                        f"{memory['usable_bytes'] / 1e9:,.1f} GB usable on {memory['gpus_per_engine']} x {card.name}: "
                        "give more --gpus-per-engine, fewer --gpu-slots or a larger --gpu")
    slo = SLO(cold_ttft_p99_s=args.slo_cold_p99_ms / 1e3, warm_ttft_s=args.warm_ttft_ms / 1e3,
              engine_rps=args.engine_rps, max_engines=args.max_engines)
    model = engine_model(adapter, hw, memory["gpus_per_engine"])
    rows, needed = engines_for_slo(traffic, model, args.routing, slo, args.engines)
    return {
        "model": {"name": spec.base.name, "weight_dtype": spec.weight_dtype},
        "adapter": asdict(adapter), "traffic": asdict(traffic), "routing": args.routing,
        "hardware": {"gpu": card.name, "hbm_bytes": card.hbm_bytes, "pcie_bytes_per_s": card.pcie_bytes_per_s,
                     **{k: v for k, v in asdict(hw).items() if k != "gpu"}},
        "gpu_memory": memory, "slo": asdict(slo), "rows": rows, "engines_needed": needed,
        "engines_given": args.engines,
    }


def _gb(n: float) -> str:
    return f"{n / 1e9:,.1f} GB" if n >= 1e8 else f"{n / 1e6:,.2f} MB" if n >= 1e5 else f"{n / 1e3:,.1f} KB"


def _ms(s: float | None) -> str:
    return "-" if s is None else f"{s * 1e3:,.0f}" if s >= 0.01 else f"{s * 1e3:.1f}"


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{x:.1%}"


def render(plan: dict) -> str:
    a, t, hw, mem, slo = plan["adapter"], plan["traffic"], plan["hardware"], plan["gpu_memory"], plan["slo"]
    load = f"{t['rate']:,.0f} req/s (Poisson)" if t["rate"] else f"{t['clients']} clients back to back"
    source = (f"{hw['source']} {hw['source_bytes_per_s'] / 1e9:g} GB/s, {hw['read_overhead_s'] * 1e3:g} ms a read "
              f"({'fixed' if hw['read_overhead_fixed'] else 'mean'}), "
              f"{hw['load_workers']} load workers")
    lines = [
        f"model     {plan['model']['name']} ({plan['model']['weight_dtype']}); adapters rank {a['rank']} on "
        f"{', '.join(a['targets'])}",
        f"adapter   {_gb(a['file_bytes'])} read, {_gb(a['host_bytes'])} in host memory, {_gb(a['gpu_bytes'])} "
        f"per GPU slot (whole engine)",
        f"traffic   {load}, zipf s={t['zipf_s']:g} over {t['catalog_size']:,} adapters, {t['request_seconds']:g} s "
        f"a request; {t['requests']:,} requests simulated, the first {t['warmup_requests']:,} only warm the caches",
        f"engine    {mem['gpus_per_engine']} x {hw['gpu']}: per GPU {_gb(mem['weight_bytes'])} weights, "
        f"{_gb(mem['lora_pool_bytes'])} LoRA pool ({hw['gpu_slots']} slots), {_gb(mem['kv_cache_bytes'])} left "
        f"for KV cache of {_gb(mem['usable_bytes'])} usable",
        f"          host cache {_gb(hw['host_cache_bytes'])} ({plan['rows'][0]['host_capacity_adapters']:,} "
        f"adapters), {source}, PCIe {hw['pcie_bytes_per_s'] / 1e9:g} GB/s; routing {plan['routing']}",
        "",
        f"{'engines':>7} {'req/s/eng':>9} {'host hit':>8} {'cold/s':>7} {'load/eng':>10} {'link':>5} "
        f"{'cold p50 ms':>11} {'p99 ms':>8} {'worst p99 ms':>12} {'slot hit':>8} {'in flight':>9}  SLO",
    ]
    for r in plan["rows"]:
        b = r["busiest_engine"]
        # A link or the workers busy all the time: queues grow for as long as the run, and so the waits.
        over = max(b["link_utilization"], b["worker_utilization"], b["pcie_utilization"]) >= 1
        p50, p99, worst = ("overload",) * 3 if over else (
            _ms(r["cold_ttft_p50_s"]), _ms(r["cold_ttft_p99_s"]), _ms(b["cold_ttft_p99_s"]))
        misses = [m for m in r["misses_slo"] if not (over and m.startswith("cold TTFT"))]
        lines.append(
            f"{r['engines']:>7} {b['requests_per_s']:>9,.1f} {_pct(r['hit_rate']):>8} {r['cold_loads_per_s']:>7,.1f} "
            f"{_gb(b['load_bytes_per_s']) + '/s':>10} {b['link_utilization']:>5.0%} {p50:>11} {p99:>8} {worst:>12} "
            f"{_pct(r['gpu_slot_hit_rate']):>8} {b['in_flight_p99']:>9}  {'; '.join(misses) or 'met'}")
    lines.append("")
    lines.append("cold p50/p99: TTFT of requests that found their adapter out of host memory (overload: a link or "
                 "the load workers busy all the time, so waits grow with the run). req/s/eng, load/eng, link (its "
                 "busy share), worst p99 and in flight (p99 adapters held: the GPU slots a batch needs) are the "
                 "busiest engine's.")
    needed, given = plan["engines_needed"], plan.get("engines_given")
    target = f"cold TTFT p99 <= {slo['cold_ttft_p99_s'] * 1e3:,.0f} ms"
    if needed is None:
        lines.append(f"{given} engine{'s miss' if given > 1 else ' misses'} {target}" if given else
                     f"no engine count up to {slo['max_engines']} meets {target}")
    else:
        row = next(r for r in plan["rows"] if r["engines"] == needed)
        said = (f"{given} engine{'s meet' if given > 1 else ' meets'}" if given else
                f"engines needed: {needed} ({needed * mem['gpus_per_engine']} GPUs) for")
        lines.append(f"{said} {target}: host hit {_pct(row['hit_rate'])}, "
                     f"{row['cold_loads_per_s']:,.1f} cold loads/s needing {_gb(row['load_bytes_per_s'])}/s "
                     f"in all, reads p50 {_ms(row['read_p50_s'])} ms p99 {_ms(row['read_p99_s'])} ms")
        slots = row["busiest_engine"]["in_flight_p99"]
        if slots > hw["gpu_slots"]:
            lines.append(f"GPU slots: {slots:,} adapters in flight (p99) > {hw['gpu_slots']} slots, so SGLang would "
                         f"hold requests back for a slot; --gpu-slots {slots} (--max-loras-per-batch) takes "
                         f"{_gb(slots * a['gpu_bytes'] / mem['gpus_per_engine'])} per GPU")
    return "\n".join(lines)
