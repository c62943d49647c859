"""Tune the dense LoRA kernels' block sizes on this GPU over kernel_bench's shapes; write the tables.

    python bench/gpu/tune.py OUT [--budget-s 150] [--jobs 12] [--dry-run] [--ops a,b]

Ops and the batches they are tuned on (what serving runs):
    prefill  sgmv_shrink, sgmv_expand   segments, one per request (kernel_bench's prefill),
                                        timed by triton.testing.do_bench (L2 flushed)
    decode   sgmv_shrink, sgmv_expand   per-token slots, adapters interleaved (its decode),
                                        run as LoraBatch.by_slot, timed by CUDA-graph replay
                                        as SGLang replays decode (no host launch cost)

Every dense shape of bench/kernel_bench.py (8 layers x 3 ranks x 1/8/64 adapters x mode)
falls in one table bucket per op (kernels/_config.py: shape_bucket). Per bucket, each
candidate of CANDIDATES (block sizes filled in per shape as the heuristic would, and the
heuristic's own config as one more candidate) is checked against an fp32 reference on
every shape of the bucket, then timed (median of triton.testing.do_bench, L2 flushed);
the candidate with the lowest geometric mean wins. A candidate wrong or failing on any
shape of its bucket is out. OUT/configs/ gets <op>__<device>.json for the tuned ops plus
a copy of every table of configs/kernels, so MINT_KERNEL_CONFIG_DIR=OUT/configs is a
complete table set; OUT/tune.jsonl gets one row per (bucket, candidate).

Triton compiles each candidate once per set of constexprs, ~1 s each: first --jobs
processes compile every (candidate, shape) pair untimed into Triton's disk cache, then
this process times them, loading from that cache. Past --budget-s no new shape
starts; a bucket none of whose shapes was reached keeps its heuristic, and the table
lists the shapes not reached.

--dry-run (CPU, TRITON_INTERPRET=1, fp32): every candidate on kernel_bench's small dry
shapes, checked against the reference, no timing, no table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

if "--dry-run" in sys.argv:  # before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]
import kernel_bench as kb  # noqa: E402
from _common import git_commit  # noqa: E402
from sglang_mint.kernels import sgmv_expand, sgmv_shrink  # noqa: E402
from sglang_mint.kernels import _config  # noqa: E402

OPS = ("sgmv_shrink", "sgmv_expand")
MODES = ("prefill", "decode")
# The free parameters per op; BLOCK_N (shrink) and BLOCK_K (expand) follow the rank.
CANDIDATES = {
    "sgmv_shrink": {
        "prefill": [dict(BLOCK_M=bm, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw, num_stages=ns)
                    for bm, bk, sk, nw, ns in [(64, 64, 1, 4, 3), (64, 128, 4, 4, 3), (64, 64, 8, 4, 3),
                                               (128, 64, 4, 8, 3), (128, 128, 8, 8, 3), (32, 128, 8, 4, 3),
                                               (64, 128, 16, 4, 4), (128, 64, 16, 8, 4)]],
        "decode": [dict(BLOCK_M=bm, BLOCK_K=bk, SPLIT_K=sk, num_warps=nw, num_stages=ns)
                   for bm, bk, sk, nw, ns in [(16, 128, 16, 4, 3), (16, 256, 16, 4, 3), (16, 64, 32, 4, 3),
                                              (16, 128, 32, 4, 4), (32, 128, 16, 4, 3), (16, 256, 8, 8, 3)]]},
    "sgmv_expand": {
        "prefill": [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns)
                    for bm, bn, nw, ns in [(64, 64, 4, 2), (64, 128, 4, 3), (128, 128, 8, 3),
                                           (128, 64, 4, 3), (64, 256, 8, 3), (128, 256, 8, 3)]],
        "decode": [dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=nw, num_stages=ns)
                   for bm, bn, nw, ns in [(16, 64, 4, 2), (16, 128, 4, 2), (16, 256, 4, 3),
                                          (16, 256, 8, 3), (32, 128, 4, 3), (16, 512, 8, 3)]]},
}
TOL = kb.TOL
# --dry-run adds shapes whose K is long enough to split (kernel_bench's dry shapes have K <= 64)
DRY_SPLIT = ((kb.Layer("tiny", "qkv_long_k", 640, (48, 16, 16)), "decode", 12, 3, 8),
             (kb.Layer("tiny", "o_long_k", 1000, (64,)), "prefill", 40, 2, 16))


def dense_specs(dry_run: bool, limit=None) -> list:
    if dry_run:
        return [s for s in kb.DRY if not s[0].experts] + list(DRY_SPLIT)
    return [s for s in kb.specs() if not s[0].experts][:limit]


def batch_of(d: dict):
    """What the backend runs: segments in prefill, the per-token form by slot in decode."""
    return d["seg"] if d["mode"] == "prefill" else d["tok"].by_slot(d["T"])


def rows_of(d: dict) -> int:
    """The M a launcher picks its table entry by (kernels/sgmv_shrink.py)."""
    b = batch_of(d)
    return b.rows_hint or b.max_seg_len


def bucket_of(op: str, d: dict) -> str:
    K, R, S = d["x"].shape[1], d["rank"], d["S"]
    widest = max(hi - lo for lo, hi in zip(d["offs"], d["offs"][1:]))
    return _config.shape_bucket(K if op.endswith("shrink") else widest, R, S, rows_of(d))


def fill(op: str, cand: dict, d: dict) -> dict:
    """The candidate with the rank-bound block sizes the heuristic would pick."""
    base = _config._heuristic(op, d["x"].shape[1], d["rank"], d["S"], d["T"])
    cfg = dict(cand)
    cfg["BLOCK_N" if op.endswith("shrink") else "BLOCK_K"] = base[
        "BLOCK_N" if op.endswith("shrink") else "BLOCK_K"]
    return cfg


def references(d: dict) -> dict:
    """fp32 y (shrink) and out (expand of y rounded to x's dtype), slot by slot."""
    x, a, b, r, S, offs = d["x"], d["a"], d["b"], d["rank"], d["S"], d["offs"]
    slots = d["token_slots"].to(x.device)
    y = torch.zeros(d["T"], S * r, dtype=torch.float32, device=x.device)
    for s in range(d["n_slots"]):
        rows = (slots == s).nonzero().flatten()
        y[rows] = x[rows].float() @ a[s].float().t()
    y_in = y.to(x.dtype)
    out = d["out0"].float().clone()
    for s in range(d["n_slots"]):
        rows = (slots == s).nonzero().flatten()
        for i, (lo, hi) in enumerate(zip(offs, offs[1:])):
            out[rows, lo:hi] += d["scaling"] * (y_in[rows, i * r:(i + 1) * r].float()
                                                @ b[s, lo:hi, :].float().t())
    return {"y": y, "y_in": y_in, "out": out}


def runner(op: str, d: dict, cfg: dict):
    batch = batch_of(d)
    if op.endswith("shrink"):
        return lambda: sgmv_shrink(d["x"], d["a"], d["y"], batch, d["S"], config=cfg)
    y_in = d["ref"]["y_in"]
    return lambda: sgmv_expand(y_in, d["b"], d["out"], batch, d["offsets"], d["offs"], config=cfg)


def rel_err(op: str, fn, d: dict) -> float:
    if op.endswith("shrink"):
        d["y"].fill_(float("nan"))
        fn()
        ref = d["ref"]["y"]
        return float((d["y"].float() - ref).norm() / ref.norm())
    d["out"].copy_(d["out0"])
    fn()
    ref = d["ref"]["out"]
    return float((d["out"].float() - ref).norm() / (ref - d["out0"].float()).norm())


def candidates(op: str, d: dict) -> list[tuple[str, dict]]:
    heur = _config._heuristic(op, d["x"].shape[1], d["rank"], d["S"], rows_of(d))
    return [("heuristic", heur)] + [(f"c{i}", fill(op, c, d))
                                    for i, c in enumerate(CANDIDATES[op][d["mode"]])]


def shapes(ops, modes, dry_run, limit, device, dtype, refs=True, late=lambda: False):
    """(op, spec, d) for every op and dense shape, tensors built once per shape;
    once late() is true, d is None (nothing is built)."""
    gen = torch.Generator(device).manual_seed(0)
    for spec in dense_specs(dry_run, limit):
        todo = list(ops) if spec[1] in modes else []
        if not todo:
            continue
        if late():
            for op in todo:
                yield op, spec, None
            continue
        d = kb.build(spec, device, dtype, gen)
        d["ref"] = references(d) if refs else {"y_in": d["y"].normal_()}
        for op in todo:
            yield op, spec, d
        del d
        if device.type == "cuda":
            torch.cuda.empty_cache()


def compile_part(ops, modes, part: int, parts: int, limit) -> None:
    """Run every candidate numbered part (mod parts) once on every shape: fills Triton's cache."""
    device = torch.device("cuda")
    for op, spec, d in shapes(ops, modes, False, limit, device, torch.bfloat16, refs=False):
        for i, (_, cfg) in enumerate(candidates(op, d)):
            if i % parts == part:
                try:
                    runner(op, d, cfg)()
                except Exception as e:  # noqa: BLE001 - the timing pass reports it
                    print(f"compile {op} {cfg}: {type(e).__name__}: {e}"[:200], flush=True)
        torch.cuda.synchronize()


def precompile(ops, modes, jobs: int, limit, deadline_s: float) -> float:
    t0 = time.monotonic()
    cmd = [sys.executable, __file__, "-", "--ops", ",".join(ops), "--modes", ",".join(modes)] + (
        ["--limit", str(limit)] if limit else [])
    procs = [subprocess.Popen(cmd + ["--compile-part", f"{i}/{jobs}"]) for i in range(jobs)]
    for p in procs:
        try:
            p.wait(timeout=max(1.0, deadline_s - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
    return time.monotonic() - t0


def tune(ops, modes, out: Path, dry_run: bool, budget_s: float, jobs: int, limit) -> int:
    t0 = time.monotonic()
    device = torch.device("cpu" if dry_run else "cuda")
    dtype = torch.float32 if dry_run else torch.bfloat16
    if not dry_run and jobs > 1:
        sec = precompile(ops, modes, jobs, limit, budget_s * 0.5)
        print(f"tune: compiled candidates in {jobs} processes, {sec:.0f} s", flush=True)
    import triton.testing as tt

    times = defaultdict(lambda: defaultdict(list))   # (op, bucket) -> name -> [ms]
    configs, bad, late = {}, defaultdict(set), set()
    n_wrong = 0
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "tune.jsonl", "w") as rows:
        for op, spec, d in shapes(ops, modes, dry_run, limit, device, dtype,
                                  late=lambda: time.monotonic() - t0 > budget_s):
            if d is None:
                late.add((op, spec))
                continue
            key = (op, bucket_of(op, d))
            for name, cfg in candidates(op, d):
                configs[(key, name)] = cfg
                row = {"op": op, "bucket": key[1], **kb.setup_of(spec), "candidate": name, "config": cfg}
                try:
                    fn = runner(op, d, cfg)
                    row["rel_err"] = rel_err(op, fn, d)
                    if not row["rel_err"] <= TOL:
                        row["status"] = "wrong"
                    elif dry_run:
                        row["status"] = "ok"
                    else:
                        row["ms"] = (tt.do_bench_cudagraph(fn, rep=10, return_mode="median")
                                     if d["mode"] == "decode" else
                                     tt.do_bench(fn, warmup=3, rep=12, return_mode="median"))
                        row["status"] = "ok"
                        times[key][name].append(row["ms"])
                except Exception as e:  # noqa: BLE001 - one candidate's failure is its row
                    row.update(status="failed", why=f"{type(e).__name__}: {e}"[:300])
                if row["status"] != "ok":
                    bad[key].add(name)
                    n_wrong += 1
                    print(f"tune: {row['status']} {op} {key[1]} {name} {cfg}: "
                          f"{row.get('why') or row.get('rel_err')}", flush=True)
                rows.write(json.dumps(row) + "\n")
    if dry_run:
        print(f"tune --dry-run: {len(configs)} (bucket, candidate) pairs checked, {n_wrong} wrong or failed")
        return 1 if n_wrong else 0
    write_tables(ops, modes, out / "configs", times, configs, bad, late)
    print(f"tune: {time.monotonic() - t0:.0f} s, {n_wrong} wrong or failed candidates, "
          f"{len(late)} (op, shape) pairs not reached")
    return 0


def write_tables(ops, modes, dest: Path, times, configs, bad, late) -> None:
    """The tuned buckets over the device's existing table (a run of one mode keeps the other's)."""
    dest.mkdir(parents=True, exist_ok=True)
    for src in _config.CONFIG_DIR.glob("*.json"):
        shutil.copy(src, dest / src.name)
    device = _config.device_key(torch.device("cuda"))
    stamp = {"device": device, "git_commit": os.environ.get("MINT_GIT_COMMIT") or git_commit(),
             "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    import triton

    stamp["triton"] = triton.__version__
    for op in ops:
        old_path = _config.CONFIG_DIR / f"{op}__{device}.json"
        old = json.loads(old_path.read_text()) if old_path.exists() else {}
        table = {"op": op, **stamp, "modes": modes,
                 "README": "Measured by bench/gpu/tune.py (see its docstring): per bucket, the "
                           "candidate with the lowest geometric-mean time over kernel_bench's shapes "
                           "in it; gain = heuristic / tuned. Buckets not listed use "
                           f"{op}__default.json, then the heuristic in kernels/_config.py.",
                 "configs": old.get("configs", {}), "gain": old.get("gain", {}),
                 "not_reached": [kb.setup_of(spec) for o, spec in late if o == op]}
        if old:
            table["earlier"] = {k: old.get(k) for k in ("git_commit", "date", "modes")}
        for (o, bucket), by_name in sorted(times.items()):
            if o != op:
                continue
            n = max(len(v) for v in by_name.values())
            ok = {k: v for k, v in by_name.items() if len(v) == n and k not in bad[(o, bucket)]}
            if not ok:
                continue
            geo = {k: math.exp(sum(map(math.log, v)) / n) for k, v in ok.items()}
            best = min(geo, key=geo.get)
            table["configs"][bucket] = configs[((o, bucket), best)]
            if "heuristic" in geo:
                table["gain"][bucket] = round(geo["heuristic"] / geo[best], 3)
            print(f"tune: {op:<12} {bucket:<22} {best:<9} {geo[best] * 1e3:8.1f} us "
                  f"(heuristic {geo.get('heuristic', float('nan')) * 1e3:.1f})", flush=True)
        (dest / f"{op}__{device}.json").write_text(json.dumps(table, indent=1) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--budget-s", type=float, default=150)
    p.add_argument("--jobs", type=int, default=12, help="processes compiling candidates first")
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--modes", default=",".join(MODES))
    p.add_argument("--limit", type=int, default=None, help="the first N dense shapes only")
    p.add_argument("--compile-part", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    ops = [o for o in args.ops.split(",") if o]
    modes = [m for m in args.modes.split(",") if m]
    if set(ops) - set(OPS) or set(modes) - set(MODES):
        p.error(f"--ops: choose from {','.join(OPS)}; --modes from {','.join(MODES)}")
    if args.compile_part:
        part, parts = map(int, args.compile_part.split("/"))
        compile_part(ops, modes, part, parts, args.limit)
        return 0
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: tune.py times GPU kernels; use --dry-run to check it on CPU",
              file=sys.stderr)
        return 2
    return tune(ops, modes, args.out, args.dry_run, args.budget_s, args.jobs, args.limit)


if __name__ == "__main__":
    sys.exit(main())
