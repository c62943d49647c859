"""``mint plan``: how many engines, and of what, serve a catalog of adapters within a cold-TTFT SLO."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
A capacity plan before buying hardware. From a base model, an adapter shape, a traffic model
and one engine's hardware, it simulates the engines over a sampled request stream (host-memory
LRU, load workers, the load link, GPU slots; sglang_mint/capacity/simulate.py states the model)
and prints per engine count: host hit rate, cold loads/s and the load bandwidth they need, cold
TTFT p50/p99, GPU-slot hit rate and adapters in flight; then the fewest engines that meet the SLO.
Sizes accept B, KB, MB, GB, TB, KiB, MiB, GiB, TiB; bandwidths are decimal GB/s (10^9 bytes/s).
"""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("plan", help="capacity plan: engines, memory and bandwidth for a catalog under traffic",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    m = p.add_argument_group("model and adapters")
    m.add_argument("--model", default="llama-3-8b", help="a known model (llama-3-8b, llama-3-70b, qwen3-30b-a3b, "
                   "deepseek-v3, tiny) or a config.json, or a folder holding one (default llama-3-8b)")
    m.add_argument("--rank", type=int, default=16, help="adapter rank, also SGLang's --max-lora-rank (default 16)")
    m.add_argument("--targets", nargs="+", default=["all"], help="modules adapters train: names "
                   "(q_proj ... down_proj; MLA: q_a_proj, kv_b_proj, ...) or groups attention, mlp, all; on an "
                   "MoE model mlp names cover every expert (default all)")
    m.add_argument("--adapter-dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                   help="dtype of the adapter files, also held so in host memory (default bfloat16)")
    t = p.add_argument_group("traffic")
    t.add_argument("--catalog", type=int, default=100_000, help="adapters in the catalog (default 100000)")
    t.add_argument("--zipf", type=float, default=1.1, help="popularity exponent s: adapter k (0-based) has weight "
                   "1/(k+1)^s (default 1.1, as make demo and the benchmarks)")
    load = t.add_mutually_exclusive_group()
    load.add_argument("--rate", type=float, help="requests/s over all engines, Poisson arrivals (default 100)")
    load.add_argument("--clients", type=int, help="instead of --rate: this many clients, each sending its next "
                      "request when the last ends (how make demo and the benchmarks send)")
    t.add_argument("--request-seconds", type=float, default=2.0, help="seconds a request runs once its adapter is "
                   "in a GPU slot, prefill and decode; it holds its adapter that long (default 2.0)")
    t.add_argument("--requests", type=int, default=200_000, help="requests simulated (default 200000)")
    t.add_argument("--warmup-requests", type=int, help="of those, the first ones only warm the caches and are "
                   "not counted (default: half; 0 to count a cold start, as make demo sees it)")
    t.add_argument("--seed", type=int, default=0, help="seed of the sampled stream (default 0)")
    h = p.add_argument_group("hardware, per engine")
    h.add_argument("--gpu", default="h100", help="h100 (80 GB HBM, PCIe 5.0), h200 (141 GB, PCIe 5.0), "
                   "a100 (80 GB, PCIe 4.0) (default h100)")
    h.add_argument("--gpus-per-engine", type=int, help="tensor-parallel GPUs per engine (default: the fewest of "
                   "1, 2, 4, 8 whose HBM holds the weights and LoRA pool with 20%% of it left for the KV cache)")
    h.add_argument("--hbm-gb", type=float, help="HBM per GPU in GB (default: --gpu's)")
    h.add_argument("--mem-fraction", type=float, default=0.85, help="share of HBM for weights, LoRA pool and KV "
                   "cache, as SGLang's --mem-fraction-static (default 0.85)")
    h.add_argument("--gpu-slots", type=int, default=8, help="adapters on the GPU at once, SGLang's "
                   "--max-loras-per-batch (default 8, its default)")
    h.add_argument("--host-cache", default="4GiB", help="host memory for adapters, --mint-host-cache-bytes "
                   "(default 4GiB, its default)")
    h.add_argument("--pin-top", type=int, default=0, help="the N most popular adapters never leave host memory "
                   "(--mint-pin; default 0)")
    h.add_argument("--load-workers", type=int, default=2, help="read threads, --mint-load-workers (default 2)")
    h.add_argument("--source", choices=["disk", "s3"], default="disk",
                   help="where cold adapters are read from (default disk)")
    h.add_argument("--disk-gbps", type=float, default=3.0, help="disk read GB/s per engine (default 3.0)")
    h.add_argument("--s3-gbps", type=float, default=1.0, help="S3 download GB/s per engine (default 1.0)")
    h.add_argument("--s3-latency-ms", type=float, default=30.0, help="S3 first-byte ms, added to each read's "
                   "overhead with --source s3 (default 30)")
    h.add_argument("--read-overhead-ms", type=float, default=5.0, help="mean ms a read spends besides moving "
                   "bytes (open, parse, build tensors), drawn exponentially: median 0.69x, p99 4.6x the mean "
                   "(default 5; tiny rank-1 reads in this project's CPU runs: medians 2-11 ms)")
    h.add_argument("--fixed-read-overhead", action="store_true",
                   help="every read takes exactly --read-overhead-ms besides its bytes (default: drawn)")
    h.add_argument("--pcie-gbps", type=float, help="host-to-GPU copy GB/s (default: --gpu's, "
                   "H100 and H200 50, A100 25)")
    s = p.add_argument_group("routing and SLO")
    s.add_argument("--routing", choices=["affinity", "bounded", "round-robin"], default="affinity",
                   help="how engines share traffic: affinity keeps each adapter on one engine (the gateway's "
                   "consistent hashing), bounded also spills a busy engine's requests (--dp-size dispatch), "
                   "round-robin deals requests out in turn (default affinity)")
    s.add_argument("--slo-cold-p99-ms", type=float, default=1000.0, help="cold TTFT p99 every engine must meet, "
                   "ms (default 1000)")
    s.add_argument("--warm-ttft-ms", type=float, default=0.0, help="TTFT of a request whose adapter is on the "
                   "GPU, ms, added to cold TTFT (default 0: cold TTFT is then the wait for the adapter)")
    s.add_argument("--engine-rps", type=float, help="requests/s one engine serves; engine counts that give one "
                   "engine more miss the SLO (default: not checked)")
    s.add_argument("--engines", type=int, help="simulate only this many engines (default: search for the fewest)")
    s.add_argument("--max-engines", type=int, default=64, help="search no further (default 64)")
    p.add_argument("--json", action="store_true", help="one JSON document instead of the table")
    p.set_defaults(func=_plan)


def _plan(args) -> int:
    from sglang_mint.capacity.report import make_plan, render
    from sglang_mint.errors import MintError

    for flag, value in (("--engines", args.engines), ("--max-engines", args.max_engines)):
        if value is not None and value < 1:
            raise MintError(f"{flag} {value}: must be at least 1")
    plan = make_plan(args)
    print(json.dumps(plan, indent=2) if args.json else render(plan))
    return 0 if plan["engines_needed"] is not None else 1
