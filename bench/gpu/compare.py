"""Read a kernel_bench.jsonl: ours against SGLang's per shape, and the LoRA op against its layer.

    python bench/gpu/compare.py KERNEL_BENCH_JSONL [--table FILE]

Per shape (model, layer, mode, adapters n, rank r):
    ours      our best variant (ours_sgmv, ours_bgmv, ours_fused, ours_moe), ok rows only
    serving   the variant --lora-backend mint runs: ours_bgmv in decode (per-token
              slots), ours_sgmv in prefill, ours_moe for experts
    sglang    SGLang's best (sglang_csgmv, sglang_triton, sglang_fused_moe_lora), ok rows
    speedup   sglang / ours (above 1: ours faster); geometric means per path and mode;
              in decode also under CUDA-graph replay (graph_ms: device time, no host cost)
    lora/gemm decode under CUDA-graph replay (graph_ms): serving / base_gemm of the layer
    plan gain experts: ours_moe_torch_plan / ours_moe_planned, the op with its plan built in
              the timed call (ms; in decode also graph_ms): what the Triton plan saves
The lines printed are the verdicts of issue 21's items 1 and 2; --table writes every row.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

OURS = ("ours_sgmv", "ours_bgmv", "ours_fused", "ours_moe")
SGLANG = ("sglang_csgmv", "sglang_triton", "sglang_fused_moe_lora")


def serving_variant(layer: str, mode: str) -> str:
    if layer.startswith("experts"):
        return "ours_moe"
    return "ours_bgmv" if mode == "decode" else "ours_sgmv"


def shapes(rows) -> dict:
    """(model, layer, mode, n, r) -> {variant: row} for kernel rows."""
    by = defaultdict(dict)
    for r in rows:
        if r.get("kind") == "kernel" and r.get("variant"):
            by[(r["model"], r["layer"], r["mode"], r["adapters"], r["rank"])][r["variant"]] = r
    return by


def ok_ms(row, key="ms"):
    if row and row.get("status") == "ok" and row.get("check", "ok") == "ok" and key in row:
        return row[key]
    return None


def best(variants: dict, names, key="ms"):
    got = [(ok_ms(variants.get(n), key), n) for n in names]
    got = [g for g in got if g[0] is not None]
    return min(got) if got else (None, None)


def geo(xs):
    xs = [x for x in xs if x]
    return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else float("nan")


def compare(rows) -> tuple[list[dict], list[str]]:
    table, lines = [], []
    for (model, layer, mode, n, r), v in sorted(shapes(rows).items()):
        ours, ours_name = best(v, OURS)
        theirs, their_name = best(v, SGLANG)
        serve = ok_ms(v.get(serving_variant(layer, mode)))
        t = {"shape": f"{model}/{layer} {mode} n={n} r={r}", "path": "moe" if layer.startswith("experts") else "dense",
             "mode": mode, "n": n, "rank": r, "ours": ours, "ours_variant": ours_name, "serving": serve,
             "sglang": theirs, "sglang_variant": their_name,
             "speedup": theirs / ours if ours and theirs else None,
             "speedup_serving": theirs / serve if serve and theirs else None}
        g_ours, g_theirs = best(v, OURS, "graph_ms")[0], best(v, SGLANG, "graph_ms")[0]
        g_serve = ok_ms(v.get(serving_variant(layer, mode)), "graph_ms")
        if g_ours and g_theirs:
            t["graph_speedup"] = g_theirs / g_ours
            t["graph_speedup_serving"] = g_theirs / g_serve if g_serve else None
        gemm = ok_ms(v.get("base_gemm"), "graph_ms")
        if mode == "decode" and gemm:
            t["lora_over_gemm"] = (ok_ms(v.get(serving_variant(layer, mode)), "graph_ms") or math.nan) / gemm
            s_graph = best(v, SGLANG, "graph_ms")[0]
            t["sglang_over_gemm"] = s_graph / gemm if s_graph else None
        for key in ("ms", "graph_ms"):
            torch_plan, triton_plan = ok_ms(v.get("ours_moe_torch_plan"), key), ok_ms(v.get("ours_moe_planned"), key)
            if torch_plan and triton_plan:
                t[f"plan_gain_{key}"] = torch_plan / triton_plan
        table.append(t)
    for mode in ("prefill", "decode"):
        for key in ("ms", "graph_ms"):
            sel = [t[f"plan_gain_{key}"] for t in table if t["mode"] == mode and t.get(f"plan_gain_{key}")]
            if sel:
                lines.append(f"moe   {mode:<7} with its plan ({key}): torch plan / Triton plan geomean {geo(sel):.2f}, "
                             f"min {min(sel):.2f} over {len(sel)} shapes")
    for path in ("dense", "moe"):
        for mode in ("prefill", "decode"):
            sel = [t for t in table if t["path"] == path and t["mode"] == mode and t["speedup"]]
            if not sel:
                continue
            worst = min(sel, key=lambda t: t["speedup"])
            lines.append(f"{path:<5} {mode:<7} sglang/ours geomean {geo(t['speedup'] for t in sel):.2f} "
                         f"(serving path {geo(t['speedup_serving'] for t in sel):.2f}), "
                         f"ours >= 1.0 in {sum(t['speedup'] >= 1.0 for t in sel)}/{len(sel)}, "
                         f"worst {worst['speedup']:.2f} {worst['shape']}")
    graph = [t for t in table if t["path"] == "dense" and t.get("graph_speedup")]
    if graph:
        lines.append(f"dense decode under CUDA-graph replay: sglang/ours geomean "
                     f"{geo(t['graph_speedup'] for t in graph):.2f} (serving path "
                     f"{geo(t['graph_speedup_serving'] for t in graph if t.get('graph_speedup_serving')):.2f}), "
                     f"ours >= 1.0 in {sum(t['graph_speedup'] >= 1.0 for t in graph)}/{len(graph)}")
    for label, keep in (("n<=8", lambda t: t["n"] <= 8), ("n=64", lambda t: t["n"] == 64)):
        sel = [t for t in table if t.get("lora_over_gemm") and t["rank"] == 16 and keep(t)]
        if sel:
            lines.append(f"decode r16 {label}: lora/gemm (CUDA graph) ours {geo(t['lora_over_gemm'] for t in sel):.2f} "
                         f"max {max(t['lora_over_gemm'] for t in sel):.2f}, sglang "
                         f"{geo(t['sglang_over_gemm'] for t in sel):.2f} over {len(sel)} shapes")
    return table, lines


def format_table(table) -> str:
    out = [f"{'shape':<46} {'ours':>14} {'us':>7} {'sglang':>14} {'us':>7} {'sgl/ours':>8} {'lora/gemm':>9}"]
    for t in table:
        def us(x):
            return f"{x * 1e3:7.1f}" if x else f"{'-':>7}"
        sp = f"{t['speedup']:8.2f}" if t["speedup"] else f"{'-':>8}"
        lg = f"{t['lora_over_gemm']:9.2f}" if t.get("lora_over_gemm") else f"{'':>9}"
        out.append(f"{t['shape']:<46} {t['ours_variant'] or '-':>14} {us(t['ours'])} "
                   f"{t['sglang_variant'] or '-':>14} {us(t['sglang'])} {sp} {lg}")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", type=Path)
    p.add_argument("--table", type=Path, default=None)
    args = p.parse_args(argv)
    rows = [json.loads(line) for line in args.jsonl.read_text().splitlines() if line.strip()]
    table, lines = compare(rows)
    if args.table:
        args.table.write_text(format_table(table))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
