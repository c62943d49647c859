"""What bench/handoff_bench.py makes of its measurements: checks, ratios against the goals, the summary.

``reference_check`` compares the served first-token logprob of the last step
with HF+PEFT's (a separate process); ``cross_case_agreement`` the cases with one
another (the same weights at the same step); ``ratios`` sets a/b and c/a against
their goals; ``print_summary`` prints the record that went to the JSON lines.
"""

from __future__ import annotations

import sys
from pathlib import Path

CASES = ("mint", "stock", "full")  # a, b, c: results[rank][case][variant]



def reference_check(model_dir, trainers, last: int, prompt_ids, results, workdir: Path) -> dict:
    """HF+PEFT (separate process) logprob of the first token at step ``last`` against every case
    that served that step (a step redone after contention got other weights)."""
    from sglang_mint.dev.reference import run_reference

    jobs = [{"adapter": None, "prompt_ids": prompt_ids, "max_tokens": 1}]
    for t in trainers:
        folder = t.write_peft(t.step(last), workdir / f"peft-r{t.rank}-{last}")
        jobs.append({"adapter": str(folder), "prompt_ids": prompt_ids, "max_tokens": 1})
    ref = run_reference(sys.executable, model_dir, jobs)
    out = {"base_logprob": ref[0]["logprobs"][0], "base_token": ref[0]["tokens"][0]}
    for t, r in zip(trainers, ref[1:]):
        row = {"reference_logprob": r["logprobs"][0], "reference_token": r["tokens"][0], "served": {}}
        for case in CASES:
            for variant, v in results[f"r{t.rank}"].get(case, {}).items():
                for s in v.get("samples", []):
                    if s["step"] == last:
                        row["served"][f"{case}/{variant}"] = {
                            "logprob": s["logprob"], "abs_diff": abs(s["logprob"] - r["logprobs"][0])}
        row["max_abs_diff"] = max((x["abs_diff"] for x in row["served"].values()), default=None)
        out[f"r{t.rank}"] = row
    return out


def cross_case_agreement(res: dict) -> float | None:
    """Largest logprob gap between cases at the same step (the same weights everywhere)."""
    by_step: dict[int, list[float]] = {}
    for case in CASES:
        for v in res.get(case, {}).values():
            for s in v.get("samples", []):
                by_step.setdefault(s["step"], []).append(s["logprob"])
    gaps = [max(lps) - min(lps) for lps in by_step.values() if len(lps) > 1]
    return max(gaps) if gaps else None


def ratios(res: dict) -> dict:
    """a/b against the faster stock payload (goal <= 1.0) and c/a per full-update path (goal >= 20),
    for the RL step's publish (``durable-false``, else the client's default ``warm``);
    ``per_variant`` has every pairing."""
    med = {case: {v: r["median_s"] for v, r in res.get(case, {}).items() if "median_s" in r} for case in CASES}
    out = {}
    mint = med["mint"].get("durable-false") or med["mint"].get("warm") or next(iter(med["mint"].values()), None)
    if mint and med["stock"]:
        r = mint / min(med["stock"].values())
        out["a_over_b"] = {"value": round(r, 3), "goal": "<= 1.0", "met": r <= 1.0,
                           "per_variant": {f"{m}/{s}": round(a / b, 3) for m, a in med["mint"].items()
                                           for s, b in med["stock"].items()}}
    if mint and med["full"]:
        out["c_over_a"] = {f: {"value": round(v / mint, 2), "goal": ">= 20", "met": v / mint >= 20}
                           for f, v in med["full"].items()}
        out["c_over_a"]["per_variant"] = {f"{f}/{m}": round(v / a, 2) for f, v in med["full"].items()
                                          for m, a in med["mint"].items()}
    return out


def print_summary(record: dict) -> None:
    print(f"\nhandoff: trainer holds new LoRA -> first token (median / min over {record['reps']} steps, seconds)")
    labels = {"mint": "a mint publish", "stock": "b stock from_tensors", "full": "c full update"}
    for rk, res in record["results"].items():
        for case in CASES:
            for variant, v in res.get(case, {}).items():
                label = f"{labels[case]}/{variant}"
                if "median_s" in v:
                    print(f"  {rk} {label:<30} {v['median_s']:>7.3f} {v['min_s']:>7.3f}   over warm "
                          f"{v['median_over_warm_s']:.3f}  phases {v['median_phases_s']}"
                          + (f"  ({v['contended_samples']} samples beside another server)"
                             if v["contended_samples"] else ""))
                else:
                    print(f"  {rk} {label:<30} {v.get('skipped') or v.get('failed', '')[:300]}")
        for name, r in res["ratios"].items():
            print(f"  {rk} {name}: {r}")
        print(f"  {rk} largest logprob gap between cases at the same step: {res['cross_case_max_logprob_gap']}")
    if record["reference"]:
        print("reference (HF+PEFT) vs served, last step, largest |logprob gap|:",
              {k: v["max_abs_diff"] for k, v in record["reference"].items() if isinstance(v, dict)})
