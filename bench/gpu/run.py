"""The one command of a GPU check: install the carried wheels, then test and measure.

    python3 bench/gpu/run.py OUT [--dry-run] [--wheels .whl/gpu] [--budget-s 450]
                                 [--steps env,tests,tune,kernels,routes] [--tune-s 150]
                                 [--tune-modes decode] [--tests-k EXPR] [--bench-paths dense]

Steps, each a child process with its own time limit, its output streamed to
stdout and OUT/run.log:

    env      _env.py --probe: versions, the device, every import a run needs -> OUT/env.json
    tests    pytest -m gpu tests/kernels (MINT_KERNEL_TESTS_ON_GPU=1: real kernels),
             less NOT_COLLECTED
    h2d      h2d_load.py: a packed vs a PEFT adapter from pinned memory -> OUT/h2d_load.jsonl
             (not in the default steps: it measures loading, which kernel work leaves alone)
    tune     tune.py: the dense kernels' block sizes over kernel_bench's shapes -> OUT/configs/
             (every table, the device's new ones included) and OUT/tune.jsonl
    kernels  kernel_bench.py, bf16, ours vs SGLang's -> OUT/kernel_bench.jsonl, with the
             tables tune wrote (MINT_KERNEL_CONFIG_DIR=OUT/configs) when it ran; it gets
             what is left of --budget-s as its deadline, and writes what it did not
             reach as skipped rows; then compare.py's verdicts -> OUT/table.txt
    routes   routes.py: from those rows, which dense shape classes SGLang's Triton kernels
             serve faster -> OUT/configs/routes__<device>.json (the backend's table)

OUT/summary.json records each step's exit code, seconds and limit. Before the
steps: the wheels are installed with pip --no-index --no-deps --target into a
fresh temporary folder, and sglang_mint comes from a shim of links to this
checkout (see _env.py); nothing is installed into the machine's python.

--dry-run (a CPU machine, CI): the same steps up to the first CUDA call. The
children run under `python -S` over a simulated GPU image (only its packages,
linked from this interpreter), TRITON_INTERPRET=1; env imports with torch
pretending CUDA (SGLang's CUDA-only imports show up); tests only collect; h2d
and kernels run their own --dry-run; every limit and the budget are ten times
the GPU run's (DRY_RUN_SLACK). Without wheels in --wheels (or with
wheels for another Python), this interpreter's copies of the carried
distributions stand in for them.

MINT_GIT_COMMIT, if set, is the commit the rows and summary.json carry (the
GPU machine gets the working tree without .git).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402

REPO = _env.REPO
STEPS = ("env", "tests", "h2d", "tune", "kernels", "routes")
DEFAULT_STEPS = ("env", "tests", "tune", "kernels", "routes")
LIMIT_S = {"env": 90, "tests": 150, "h2d": 90, "tune": 150, "routes": 20}  # kernels: the rest of the budget
# Test files that cannot import on the GPU machine and hold no gpu test: test_moe_glue
# imports sglang.srt.lora.lora_moe_runners, which on CUDA needs sgl_kernel (not carried).
NOT_COLLECTED = ("tests/kernels/test_moe_glue.py",)
KERNELS_TAIL_S = 30   # kernel_bench's last shape, its summary, and this script's own end
# A dry run stretches every limit and budget by this much: they ration the GPU machine's time, and
# a CPU machine running the same steps beside other work (CI's fast lane at nice 19, beside SGLang
# servers) can be ten times slower than when idle without anything being wrong.
DRY_RUN_SLACK = 10


def commands(py: list[str], out: Path, dry_run: bool, tests_k: str = "", tune_modes: str = "",
             bench_paths: str = "all") -> dict:
    dry = ["--dry-run"] if dry_run else []
    pytest = [*py, "-P", "-m", "pytest", "-m", "gpu", "tests/kernels", "-q", "-rfEs",
              "-p", "no:cacheprovider", "--continue-on-collection-errors",
              *(f"--ignore={t}" for t in NOT_COLLECTED)] + (["-k", tests_k] if tests_k else [])
    return {
        "env": [*py, "bench/gpu/_env.py", "--probe", *(["--pretend-cuda"] if dry_run else [])],
        "tests": pytest + (["--collect-only"] if dry_run else []),
        "h2d": [*py, "bench/gpu/h2d_load.py", "--out", str(out / "h2d_load.jsonl"), *dry],
        "tune": [*py, "bench/gpu/tune.py", str(out), *dry] + (["--modes", tune_modes] if tune_modes else []),
        "kernels": [*py, "bench/kernel_bench.py", "--out", str(out / "kernel_bench.jsonl"), *dry,
                    "--paths", bench_paths],
        "routes": [*py, "bench/gpu/routes.py", str(out / "kernel_bench.jsonl"), "--out", str(out / "configs")],
    }


def run_step(name: str, cmd: list[str], env: dict, limit_s: float, log) -> dict:
    """Run cmd from the checkout's root, streaming its output; kill it past limit_s."""
    print(f"== {name}: {' '.join(cmd[1:])}  (limit {limit_s:.0f} s)", flush=True)
    log.write(f"== {name}: {' '.join(cmd)}\n")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    timer = threading.Timer(limit_s, proc.kill)  # also stops a child that has gone quiet
    timer.start()
    lines = []
    for line in proc.stdout:  # flushed line by line: a run killed from outside keeps its log
        sys.stdout.write(line)
        sys.stdout.flush()
        log.write(line)
        log.flush()
        lines.append(line)
    proc.wait()
    timed_out = not timer.is_alive()
    timer.cancel()
    rc = "timeout" if timed_out else proc.returncode
    sec = time.monotonic() - t0
    print(f"== {name}: exit {rc} after {sec:.0f} s", flush=True)
    log.flush()
    return {"rc": rc, "seconds": round(sec, 1), "limit_s": round(limit_s), "output": lines}


def prepare(tmp: Path, wheels: Path, dry_run: bool) -> tuple[dict, list[str], dict]:
    """(env, interpreter command, what was set up) for the steps."""
    t0 = time.monotonic()
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    manifest = wheels / "wheels.json"
    built_for = json.loads(manifest.read_text())["python"] if manifest.exists() else None
    if dry_run and built_for not in (None, here):  # wheels for the GPU machine's python, not ours
        installed, failed = [], {}
    else:
        installed, failed = _env.install_wheels(wheels, tmp / "site")
    image = _env.simulated_image(tmp / "image") if dry_run else None
    if dry_run and not installed:
        _env.carried_standin(tmp / "site")
    env = _env.python_env(_env.mint_shim(tmp / "shim"), tmp / "site", image)
    if dry_run:
        env["TRITON_INTERPRET"] = "1"
        env.pop("MINT_KERNEL_TESTS_ON_GPU", None)
    else:
        env.pop("TRITON_INTERPRET", None)
        env["MINT_KERNEL_TESTS_ON_GPU"] = "1"
    setup = {"wheels": installed, "wheels_failed": failed, "wheels_python": built_for, "python": here,
             "wheels_dir": str(wheels), "temp": str(tmp),
             "carried": "wheels" if installed else ("this interpreter's copies (dry run)" if dry_run else "none"),
             "simulated_image": dry_run, "seconds": round(time.monotonic() - t0, 1)}
    return env, _env.python_cmd(image), setup


def save(summary: dict, out: Path, t0: float) -> None:
    summary["seconds"] = round(time.monotonic() - t0, 1)
    (out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")


def digest(out: Path) -> list[str]:
    """What to read first: row counts, ceilings, kernels at rank 16 with 8 adapters, h2d."""
    lines = []
    path = out / "kernel_bench.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    kernels = [r for r in rows if r.get("kind") == "kernel"]
    if kernels:
        counts = Counter(r["status"] for r in kernels)
        lines.append("kernel rows: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    for r in rows:
        if r.get("kind") == "ceilings":
            lines.append(f"ceilings: copy {r['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                         f"bf16 matmul {r['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
    bad = [r for r in kernels if r["status"] in ("wrong", "failed")]
    for r in bad[:8]:
        lines.append(f"  {r['status']}: {r['model']}/{r['layer']} {r['mode']} n={r['adapters']} "
                     f"r={r['rank']} {r['variant']}: {r.get('why') or r.get('rel_err')}"[:200])
    if kernels:
        import compare

        table, verdicts = compare.compare(rows)
        (out / "table.txt").write_text(compare.format_table(table))
        lines += verdicts
    table = {}
    for r in kernels:
        if r["rank"] == 16 and r["adapters"] == 8:
            val = f"{r['ms'] * 1e3:.1f}" if "ms" in r else r["status"]
            table.setdefault(f"{r['model']}/{r['layer']} {r['mode']}", []).append(
                f"{r['variant']} {val}{'!' if r.get('check') == 'FAIL' else ''}")
    if table:
        lines.append("us per call at rank 16, 8 adapters (median, L2 flushed; ! = wrong result):")
        lines += [f"  {k:<38} " + "  ".join(v) for k, v in table.items()]
    path = out / "h2d_load.jsonl"
    for r in (json.loads(line) for line in path.read_text().splitlines()) if path.exists() else ():
        speed = f"{r['GB_per_s']:.1f} GB/s" if "GB_per_s" in r else r["status"]
        lines.append(f"h2d {r['setup']['adapter']:>5} {r['variant']:<18} {speed}")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--wheels", type=Path, default=_env.WHEELS)
    p.add_argument("--budget-s", type=float, default=450, help="all steps together (8 min: 480)")
    p.add_argument("--steps", default=",".join(DEFAULT_STEPS))
    p.add_argument("--tune-s", type=float, default=LIMIT_S["tune"], help="the tune step's budget")
    p.add_argument("--tune-modes", default="", help="tune only these modes (prefill,decode)")
    p.add_argument("--tests-k", default="", help="pytest -k expression for the tests step")
    p.add_argument("--bench-paths", default="all", choices=("all", "dense", "experts"),
                   help="kernel_bench's layers")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    steps = [s for s in args.steps.split(",") if s]
    if set(steps) - set(STEPS):
        p.error(f"--steps: choose from {','.join(STEPS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="mint-gpu-"))
    summary = {"dry_run": args.dry_run, "budget_s": args.budget_s,
               "git_commit": os.environ.get("MINT_GIT_COMMIT"), "steps": {}}
    try:
        with open(args.out / "run.log", "w") as log:
            env, py, summary["setup"] = prepare(tmp, args.wheels, args.dry_run)
            setup = summary["setup"]
            print(f"== setup: {len(setup['wheels'])} wheels installed, carried: {setup['carried']} "
                  f"({setup['seconds']} s)")
            if setup["wheels_failed"] or setup["wheels_python"] not in (None, setup["python"]):
                print(f"== setup: wheels for python {setup['wheels_python']} on {setup['python']}; "
                      f"not installed: {setup['wheels_failed']}")
            cmds = commands(py, args.out, args.dry_run, args.tests_k, args.tune_modes,
                            args.bench_paths)
            slack = DRY_RUN_SLACK if args.dry_run else 1
            budget_s, tune_s, tail_s = args.budget_s * slack, args.tune_s * slack, KERNELS_TAIL_S * slack
            for name in steps:
                left = budget_s - (time.monotonic() - t0)
                cmd = cmds[name]
                step_env = dict(env)
                if name == "kernels":
                    reserve = LIMIT_S["routes"] * slack if "routes" in steps else 0
                    cmd = cmd + ["--deadline-s", f"{max(0.0, left - reserve - 2 * tail_s):.0f}"]
                    limit = left - reserve - 5
                    if any((args.out / "configs").glob("*.json")):
                        step_env["MINT_KERNEL_CONFIG_DIR"] = str((args.out / "configs").resolve())
                elif name == "tune":
                    limit = min(tune_s + 20, left - tail_s)
                    cmd = cmd + ["--budget-s", f"{max(0.0, limit - 30):.0f}"]
                elif name == "routes":
                    limit = min(LIMIT_S[name] * slack, left - 2)
                else:
                    limit = min(LIMIT_S[name] * slack, left - tail_s)
                if limit <= 0:
                    summary["steps"][name] = {"rc": "not run", "why": "budget spent"}
                    continue
                if name == "env":  # it imports as on the GPU machine: no interpreter
                    step_env.pop("TRITON_INTERPRET", None)
                res = run_step(name, cmd, step_env, limit, log)
                if name == "env" and res["rc"] == 0:
                    (args.out / "env.json").write_text(res["output"][-1])
                summary["steps"][name] = {k: v for k, v in res.items() if k != "output"}
                if name == "tests":  # pytest's closing line, e.g. "40 passed, 6 failed in 93.1s"
                    ends = [ln.strip() for ln in res["output"] if " in " in ln and any(
                        w in ln for w in ("passed", "failed", "error", "collected", "skipped"))]
                    summary["steps"][name]["result"] = ends[-1] if ends else ""
                save(summary, args.out, t0)  # after each step: a run stopped from outside keeps it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save(summary, args.out, t0)
    print("\n".join(digest(args.out)))
    print("== summary: " + ", ".join(f"{k} {v['rc']} ({v.get('seconds', 0)} s)"
                                      for k, v in summary["steps"].items())
          + f"; total {summary['seconds']} s; files in {args.out}")
    return 0 if all(v["rc"] == 0 for v in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
