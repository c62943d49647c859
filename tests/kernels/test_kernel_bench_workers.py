"""kernel_bench's workers: a lost CUDA context costs one row, a crashed worker one shape.

On a GPU, kernel_bench runs its shapes in a worker process and starts a fresh one
after a kernel breaks the CUDA context (SGLang's csgmv and fused MoE kernels did,
twice, in the first H200 run, each time ending the whole run). Here the same
supervisor runs the dry run's shapes (Triton interpreter) with a lost context and
a hard crash injected through the worker's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from hung import HUNG_AFTER_S

REPO = Path(__file__).resolve().parents[2]


def bench(tmp_path, **env) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "kb.jsonl"
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "kernel_bench.py"), "--dry-run", "--isolate",
         "--paths", "experts", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=HUNG_AFTER_S, env={**os.environ, **env})
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    return proc, [r for r in rows if r["status"] != "planned"]


def test_a_lost_context_costs_one_row_and_a_crashed_worker_its_shape(tmp_path):
    # --paths experts plans 72 shapes; the dry run's 6 small ones follow: 72 is tiny/qkv, 73 gate_up.
    # Both faults in one run: the run goes on after each.
    proc, rows = bench(tmp_path, MINT_BENCH_LOSE_CONTEXT_AT="72:1", MINT_BENCH_DIE_AT="73")
    assert "2 worker restarts" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    qkv = [r for r in rows if r["layer"] == "qkv"]
    assert [r["variant"] for r in qkv] == [
        "ours_sgmv", "ours_bgmv", "ours_fused", "sglang_csgmv", "sglang_triton", "base_gemm"]
    assert qkv[1]["status"] == "failed" and "context lost" in qkv[1]["why"]  # one row of its shape
    gate_up = [r for r in rows if r["layer"] == "gate_up"]
    assert len(gate_up) == 1 and gate_up[0]["why"] == "worker exit 9"  # the whole shape
    assert all(r["status"] == "ok" for r in rows if r is not qkv[1] and r["layer"] != "gate_up"), rows
    assert {r["layer"] for r in rows if r["status"] == "ok"} == {
        "qkv", "mla_qkv_a", "o", "experts_gate_up", "experts_down"}   # every other dry shape ran
