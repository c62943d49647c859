"""How many launches does one MoE layer's (slot, expert) plan enqueue, and what does its host side cost?

    python bench/moe_plan_launches.py [--rounds 7] [--calls 500]

Serving builds one plan per MoE layer and forward (sglang/mint_moe.py), so outside a CUDA graph
each of its launches is host time, and inside one each is a graph node. Two ways, same inputs
(Qwen3-30B-A3B: 128 experts, top 8; 8 adapters; prefill 2048 tokens, decode 64):
  "torch"   moe_lora_plan_ref, the plan in torch ops (the code before kernels/moe_plan.py);
  "triton"  moe_lora_plan: a memset and three Triton kernels.
Launches: every aten call that runs a kernel on a GPU (views and allocations do not), counted on
CPU tensors with a TorchDispatchMode, plus the Triton launches. A lower bound for "torch": on CUDA
a stable sort and a scan are several kernels each. Host µs: "triton" only, its launchers on the
stub driver of bench/_stubbed_launch.py (launches dropped; CPU allocations stand in for the
caching allocator's). The torch way's host time needs a GPU (kernel_bench's ours_moe_torch_plan
against ours_moe_planned). Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import importlib
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import triton
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_rows, stamped  # noqa: E402
from _stubbed_launch import stubbed_triton  # noqa: E402

from sglang_mint.kernels import moe_lora_plan, moe_lora_plan_ref  # noqa: E402
from sglang_mint.kernels._launch import forget_plans  # noqa: E402

plan_module = importlib.import_module("sglang_mint.kernels.moe_plan")
KERNELS = ("_moe_plan_count_kernel", "_moe_plan_scan_kernel", "_moe_plan_place_kernel")
EXPERTS, TOP_K, ADAPTERS, RANK = 128, 8, 8, 16
CASES = {"prefill": 2048, "decode": 64}
NO_KERNEL = {"empty", "empty_strided", "lift_fresh", "_local_scalar_dense", "_unsafe_view", "scalar_tensor"}


class LaunchCount(TorchDispatchMode):
    """Counts the aten calls that run a kernel: not views, not bare allocations."""

    def __init__(self):
        super().__init__()
        self.calls = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not func.is_view and name not in NO_KERNEL:
            self.calls[name] += 1
        return func(*args, **(kwargs or {}))


def forget_stub_launchers() -> None:
    """Drop the launchers that plans and FastLaunch kept in a stubbed context: the next context's stand-ins
    must get the launches (kept ones would go on recording into the last context's)."""
    forget_plans()
    for name in KERNELS:
        getattr(plan_module, name)._launchers.clear()


def routing(tokens: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    topk_ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices.int()
    token_slots = (torch.arange(tokens) % ADAPTERS).int()
    return topk_ids, token_slots, torch.full((ADAPTERS,), RANK, dtype=torch.int32)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=500)
    p.add_argument("--out", default=str(RESULTS / "moe_plan_launches.jsonl"))
    args = p.parse_args(argv)
    kernels = [getattr(plan_module, k).kernel for k in KERNELS]
    if not isinstance(kernels[0], triton.runtime.jit.JITFunction):
        sys.exit("moe_plan_launches: run with TRITON_INTERPRET unset (the interpreter has no launch path)")
    rows = []
    for mode, tokens in CASES.items():
        inputs = routing(tokens)
        with stubbed_triton(*kernels) as compiled:  # launches recorded: counted
            with LaunchCount() as torch_way:
                moe_lora_plan_ref(*inputs, EXPERTS)
            moe_lora_plan(*inputs, EXPERTS)  # compiles (into the stub) outside the count
            launched = sum(len(k.launches) for ks in compiled.values() for k in ks)
            with LaunchCount() as triton_way:
                moe_lora_plan(*inputs, EXPERTS)
            triton_launches = sum(len(k.launches) for ks in compiled.values() for k in ks) - launched
        forget_stub_launchers()
        # launches dropped: a recorded launch holds its tensors, and every later allocation is fresh memory
        with stubbed_triton(*kernels, record=False):
            moe_lora_plan(*inputs, EXPERTS)
            times = []
            for _ in range(args.rounds):
                start = time.perf_counter()
                for _ in range(args.calls):
                    moe_lora_plan(*inputs, EXPERTS)
                times.append((time.perf_counter() - start) / args.calls * 1e6)
            row = {"bench": "moe_plan_launches", "mode": mode, "tokens": tokens, "experts": EXPERTS,
                   "top_k": TOP_K, "adapters": ADAPTERS,
                   "torch_launches_at_least": sum(torch_way.calls.values()), "torch_ops": dict(torch_way.calls),
                   "triton_launches": sum(triton_way.calls.values()) + triton_launches,
                   "triton_ops": {**triton_way.calls, "triton": triton_launches},
                   "triton_host_us": round(statistics.median(times), 2),
                   "spread_us": [round(min(times), 2), round(max(times), 2)],
                   "rounds": args.rounds, "calls": args.calls, "triton": triton.__version__}
        forget_stub_launchers()
        rows.append(stamped(row))
        print(f"{mode:8s} T={tokens:5d}: torch plan >= {row['torch_launches_at_least']} launches, "
              f"Triton plan {row['triton_launches']} ({row['triton_host_us']:.1f} µs of host time, stub driver)")
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
