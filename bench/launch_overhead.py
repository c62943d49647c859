"""Host time of one LoRA op (shrink + expand, dense or MoE): Triton's launch path, FastLaunch, planned launches.

    python bench/launch_overhead.py [--rounds 7] [--calls 2000]

Without a CUDA graph the host's time is the op's time: on the H200 machine our two launches
took 130-170 µs of host time against 9-17 µs of device time (bench/results/
kernel_bench_NVIDIA_H200_cd786fc_dense_r16.jsonl, `host_us`). This measures the host's side
on any machine: the launchers run for real (config lookup, by_slot plan, Triton's binder),
on the stub driver of bench/_stubbed_launch.py, whose compiled kernels drop their launches.
Both paths lose the same C launcher, so the difference is what FastLaunch saves a launch;
the absolute figures are not the H200 host's (bench/gpu/run.py's kernel_bench measures that).

The MoE op is Qwen3-30B-A3B's experts gate_up (hidden 2048, 768 per expert, 128 experts, top 8) at
rank 16 with 8 adapters, its (slot, expert) plan built before, as kernel_bench's ours_moe row
(bench/moe_plan_launches.py counts the plan's own launches).

Each round times `--calls` ops each way (rotating which goes first), and the row gives the
median over rounds of µs per op:
  "triton"   the launchers' work on every call (plans off) and Triton's launch (the code before FastLaunch);
  "fast"     the same work and FastLaunch's launch, binder included (the code before plans);
  "planned"  the launchers as shipped: one plan per shape, kept; FastLaunch's planned launch.
The first two also build the plan's key and object on every call, which the code before plans
did not: about 3 µs per op over that code's own figures (its bench at 7704a69, same machine).
Run with TRITON_INTERPRET unset.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from pathlib import Path
from unittest import mock

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, append_rows, stamped  # noqa: E402
from _stubbed_launch import stubbed_triton  # noqa: E402

from sglang_mint.kernels import LoraBatch, moe_lora, moe_lora_plan_ref, sgmv_expand, sgmv_shrink  # noqa: E402

shrink_module = importlib.import_module("sglang_mint.kernels.sgmv_shrink")
expand_module = importlib.import_module("sglang_mint.kernels.sgmv_expand")
moe_module = importlib.import_module("sglang_mint.kernels.moe_lora")

# llama3-8B qkv at rank 16 with 8 adapters, as kernel_bench's rows: prefill on segments, decode
# on the per-token form serving uses (LoraBatch.by_slot)
HIDDEN, WIDTHS, RANK, ADAPTERS = 4096, (4096, 1024, 1024), 16, 8
MOE_HIDDEN, MOE_WIDTH, EXPERTS, TOP_K = 2048, 768, 128, 8
CASES = {"prefill": ("dense", 2048), "decode": ("dense", 8), "moe prefill": ("moe", 2048), "moe decode": ("moe", 64)}
KERNELS = ((shrink_module, "_sgmv_shrink_kernel"), (expand_module, "_sgmv_expand_kernel"),
           (moe_module, "_moe_lora_shrink_kernel"), (moe_module, "_moe_lora_expand_kernel"))
PLANNED_IN = (shrink_module, expand_module, moe_module)


def op_for(mode: str, tokens: int):
    """The op as kernel_bench's ours_sgmv (prefill) or ours_bgmv (decode) calls it, on CPU tensors."""
    S, N = len(WIDTHS), sum(WIDTHS)
    offs = [0]
    for w in WIDTHS:
        offs.append(offs[-1] + w)
    x = torch.randn(tokens, HIDDEN, dtype=torch.bfloat16)
    a = torch.randn(ADAPTERS, S * RANK, HIDDEN, dtype=torch.bfloat16)
    b = torch.randn(ADAPTERS, N, RANK, dtype=torch.bfloat16)
    out = torch.zeros(tokens, N, dtype=torch.bfloat16)
    y = torch.empty(tokens, S * RANK, dtype=torch.bfloat16)
    slots = torch.arange(tokens) % ADAPTERS
    ranks, scalings = [RANK] * ADAPTERS, [2.0] * ADAPTERS
    if mode == "prefill":
        counts = torch.bincount(slots, minlength=ADAPTERS).tolist()
        batch = LoraBatch.from_segments(counts, range(ADAPTERS), ranks, scalings, "cpu")
    else:
        batch = LoraBatch.from_token_slots(slots, ranks, scalings, "cpu")
    offsets = torch.tensor(offs, dtype=torch.int32)
    return lambda: (sgmv_shrink(x, a, y, batch, S), sgmv_expand(y, b, out, batch, offsets, offs))


def moe_op_for(tokens: int):
    """kernel_bench's ours_moe on the experts' gate_up (2 slices), on CPU tensors, its plan built before."""
    gen = torch.Generator().manual_seed(0)
    topk_ids = torch.rand(tokens, EXPERTS, generator=gen).topk(TOP_K, dim=1).indices.int()
    slots = (torch.arange(tokens) % ADAPTERS).int()
    ranks = torch.full((ADAPTERS,), RANK, dtype=torch.int32)
    x = torch.randn(tokens, MOE_HIDDEN, dtype=torch.bfloat16)
    a = torch.randn(ADAPTERS, EXPERTS, 2 * RANK, MOE_HIDDEN, dtype=torch.bfloat16)
    b = torch.randn(ADAPTERS, EXPERTS, 2 * MOE_WIDTH, RANK, dtype=torch.bfloat16)
    out = torch.zeros(tokens, TOP_K, 2 * MOE_WIDTH, dtype=torch.bfloat16)
    y = torch.empty(2, tokens * TOP_K, RANK, dtype=torch.bfloat16)
    weights = torch.rand(tokens, TOP_K, generator=gen)
    plan = moe_lora_plan_ref(topk_ids, slots, ranks, EXPERTS)
    return lambda: moe_lora(out, x, a, b, topk_ids, weights, slots, ranks, n_slices=2, n_experts=EXPERTS,
                            plan=plan, y=y)


class NoPlans(dict):
    """A launcher's plan cache that keeps nothing (always empty): every call plans again."""

    def keep(self, key, plan):
        return plan


class UnplannedLaunch:
    """A kernel launched from the plan's parts, by Triton (``fast=False``) or FastLaunch.launch."""

    def __init__(self, fast_launch, fast: bool):
        self.fast_launch, self.fast = fast_launch, fast

    def launch_planned(self, plan, pointers):
        if self.fast:
            self.fast_launch.launch(plan.grid, pointers + plan.scalars, plan.kwargs)
        else:
            self.fast_launch.kernel[plan.grid](*pointers, *plan.scalars, **plan.kwargs)


def way(name: str):
    """The context a way of launching runs in (module docstring)."""
    if name == "planned":
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for module in PLANNED_IN:
        stack.enter_context(mock.patch.object(module, "_PLANS", NoPlans()))
    for module, kernel in KERNELS:
        stack.enter_context(mock.patch.object(module, kernel, UnplannedLaunch(
            getattr(module, kernel), fast=name == "fast")))
    return stack


WAYS = ("triton", "fast", "planned")


def us_per_op(op, calls: int, name: str) -> float:
    with way(name):
        op()  # the first launch of each specialization goes through Triton on both paths
        op()
        start = time.perf_counter()
        for _ in range(calls):
            op()
        return (time.perf_counter() - start) / calls * 1e6


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--calls", type=int, default=2000)
    p.add_argument("--out", default=str(RESULTS / "launch_overhead.jsonl"))
    args = p.parse_args(argv)
    kernels = [getattr(module, kernel).kernel for module, kernel in KERNELS]
    if not isinstance(kernels[0], triton.runtime.jit.JITFunction):
        sys.exit("launch_overhead: run with TRITON_INTERPRET unset (the interpreter has no launch path)")
    rows = []
    with stubbed_triton(*kernels, record=False):
        for mode, (kind, tokens) in CASES.items():
            op = op_for(mode, tokens) if kind == "dense" else moe_op_for(tokens)
            times = {name: [] for name in WAYS}
            for i in range(args.rounds):
                for name in WAYS[i % 3:] + WAYS[:i % 3]:
                    times[name].append(us_per_op(op, args.calls, name))
            med = {name: statistics.median(t) for name, t in times.items()}
            shape = (dict(hidden=HIDDEN, slice_widths=list(WIDTHS)) if kind == "dense" else
                     dict(hidden=MOE_HIDDEN, slice_widths=[MOE_WIDTH] * 2, experts=EXPERTS, top_k=TOP_K))
            row = {"bench": "launch_overhead", "op": kind, "mode": mode, "tokens": tokens, **shape,
                   "rank": RANK, "adapters": ADAPTERS,
                   **{f"{name}_us": round(med[name], 2) for name in WAYS},
                   "saved_us": round(med["triton"] - med["planned"], 2),
                   "spread_us": {w: [round(min(t), 2), round(max(t), 2)] for w, t in times.items()},
                   "rounds": args.rounds, "calls": args.calls, "triton": triton.__version__}
            rows.append(stamped(row))
            print(f"{mode:11s} T={tokens:5d}: Triton's path {med['triton']:6.1f} µs/op, FastLaunch "
                  f"{med['fast']:6.1f}, planned {med['planned']:6.1f} "
                  f"({med['planned'] / med['triton']:.2f} x Triton's path; 2 launches)")
    append_rows(args.out, rows)


if __name__ == "__main__":
    main()
