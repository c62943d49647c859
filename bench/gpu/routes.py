"""Question: per dense shape class, is our serving path or SGLang's Triton backend faster here?

Reads kernel_bench.jsonl rows (bench/kernel_bench.py) and writes the table that
`--lora-backend mint` routes by (kernels/routes.py): routes__<device>.json.

For each dense row, the shape class is routes.route_key(S, K, R, mode): S = the
layer's slices, K = its hidden size, R = its rank. Several layers can share a
class (llama3_8b down, K 14336, and deepseek_v3 o, K 16384, are both K16384).
Within a class, each (layer, adapter count) case compares
  ours    ours_bgmv in decode (the per-token form the backend runs there),
          ours_sgmv in prefill (segments);
  theirs  sglang_triton (TritonLoRABackend's sgemm_lora_a + *_lora_b kernels);
each timed by graph_ms when both rows have it (decode), else ms. Only rows with
status "ok" and check "ok" count. The class goes to "sglang_triton" when the
geometric mean of its times over the cases (1, 8 and 64 adapters of each layer)
is below ours, and to "mint" otherwise, or when no case has both times, or when
any sglang_triton row of the class is wrong, failed, unavailable or unchecked,
or missing where a run died in a case (kernel_bench's variant-less "failed"
row): the backend never routes to a kernel not known to be right on that shape.

SGLang's csgmv kernels (sglang_csgmv rows) are not routable: MintLoRABackend
reaches SGLang's kernels only through its superclass TritonLoRABackend's methods
(super().run_qkv_lora ...), and csgmv belongs to another backend class with its
own batch preparation. Expert (MoE) rows are not dense and are left out.

    python bench/gpu/routes.py KERNEL_BENCH_JSONL [MORE.jsonl ...] --out DIR

Several files are read as one run (the 2026-12-04 H200 check wrote ranks 16, 64
and 8 in three files); a later row of the same case and variant replaces an
earlier one, but a bad sglang_triton row vetoes its class whatever follows.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

from sglang_mint.kernels.routes import MINT, SGLANG_TRITON, device_name_key, route_key

OURS = {"decode": "ours_bgmv", "prefill": "ours_sgmv"}
THEIRS = "sglang_triton"
BAD = ("wrong", "failed", "unavailable")


def good(row: dict) -> bool:
    return row.get("status") == "ok" and row.get("check") == "ok" and "ms" in row


def dense_rows(lines):
    """(key, case, row) for every dense kernel row (variant None: a worker died in that case)."""
    for row in lines:
        if row.get("kind") != "kernel" or row.get("experts") or "slice_widths" not in row:
            continue
        key = route_key(len(row["slice_widths"]), row["hidden"], row["rank"], row["mode"])
        case = (row["model"], row["layer"], row["tokens"], row["adapters"])
        yield key, case, row


def times(ours: dict, theirs: dict) -> tuple[float, float]:
    field = "graph_ms" if "graph_ms" in ours and "graph_ms" in theirs else "ms"
    return ours[field], theirs[field]


def derive(lines) -> list[dict]:
    """One entry per dense key: key, cases, ours_ms, theirs_ms (geometric means), choice, why."""
    cases = defaultdict(dict)        # key -> case -> {variant: row}
    veto = {}                        # key -> why its sglang_triton rows cannot be used
    crashed = defaultdict(list)      # key -> cases where a worker died before naming the variant
    for key, case, row in dense_rows(lines):
        if not row.get("variant"):
            crashed[key].append(case)
            continue
        cases[key].setdefault(case, {})[row["variant"]] = row
        if row["variant"] == THEIRS and key not in veto:
            if row["status"] in BAD:
                veto[key] = f"{THEIRS} {row['status']} at {case[0]}/{case[1]} n={case[3]}"
            elif row["status"] == "ok" and row.get("check") != "ok":
                veto[key] = f"{THEIRS} unchecked at {case[0]}/{case[1]} n={case[3]}"
    for key, lost in crashed.items():  # the death may have been sglang_triton's unless it has a row
        for case in lost:
            if THEIRS not in cases[key].get(case, {}) and key not in veto:
                veto[key] = f"a run died at {case[0]}/{case[1]} n={case[3]} before {THEIRS}"
    out = []
    for key in sorted(cases):
        mode = key.rsplit("_", 1)[1]
        pairs = []
        for variants in cases[key].values():
            ours, theirs = variants.get(OURS[mode]), variants.get(THEIRS)
            if ours and theirs and good(ours) and good(theirs):
                pairs.append(times(ours, theirs))
        entry = {"key": key, "cases": len(pairs), "ours_ms": None, "theirs_ms": None}
        if pairs:
            entry["ours_ms"] = math.exp(sum(math.log(o) for o, _ in pairs) / len(pairs))
            entry["theirs_ms"] = math.exp(sum(math.log(t) for _, t in pairs) / len(pairs))
        if key in veto:
            entry.update(choice=MINT, why=veto[key])
        elif not pairs:
            entry.update(choice=MINT, why=f"no case with both {OURS[mode]} and {THEIRS} ok")
        else:
            faster = entry["theirs_ms"] < entry["ours_ms"]
            entry.update(choice=SGLANG_TRITON if faster else MINT, why="")
        out.append(entry)
    return out


def read(paths) -> list[dict]:
    rows = []
    for p in paths:
        with open(p) as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def table(rows: list[dict], entries: list[dict], sources) -> dict:
    devices = {r["device"] for r in rows if r.get("kind") == "kernel" and r.get("device")}
    if len(devices) != 1:
        raise SystemExit(f"expected the rows of one device, got {sorted(devices) or 'none'}")
    commits = sorted({r["git_commit"] for r in rows if r.get("git_commit")})
    return {
        "op": "routes",
        "device": device_name_key(devices.pop()),
        "git_commit": ",".join(commits) or "unknown",
        "source": ", ".join(Path(s).name for s in sources),
        "README": ("Which dense LoRA kernels --lora-backend mint runs per shape class "
                   "S{slices}_K{pow2 K}_R{pow2 rank}_{decode|prefill}: 'mint' (ours) or "
                   "'sglang_triton' (SGLang's Triton backend), by the geometric mean of measured "
                   "times over 1, 8 and 64 adapters. Written by bench/gpu/routes.py from the "
                   "kernel_bench rows named in 'source'; a missing key means 'mint'. Measured "
                   "on the kernels of 'git_commit': rerun both after changing a kernel. "
                   "See docs/kernels.md."),
        "routes": {e["key"]: e["choice"] for e in entries},
    }


def us(ms) -> str:
    return "-" if ms is None else f"{ms * 1e3:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jsonl", nargs="+", type=Path, help="kernel_bench.jsonl file(s) of one device")
    p.add_argument("--out", type=Path, required=True, help="folder for routes__<device>.json")
    args = p.parse_args(argv)
    rows = read(args.jsonl)
    entries = derive(rows)
    t = table(rows, entries, args.jsonl)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"routes__{t['device']}.json"
    path.write_text(json.dumps(t, indent=1, sort_keys=False) + "\n")
    print(f"{'key':<26} {'cases':>5} {'ours us':>9} {'sglang us':>9}  choice")
    for e in entries:
        print(f"{e['key']:<26} {e['cases']:>5} {us(e['ours_ms']):>9} {us(e['theirs_ms']):>9}  "
              f"{e['choice']}" + (f"  ({e['why']})" if e["why"] else ""))
    n = sum(e["choice"] == SGLANG_TRITON for e in entries)
    print(f"wrote {path}: {len(entries)} shape classes, {n} to {SGLANG_TRITON}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
