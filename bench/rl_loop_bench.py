"""An RL loop of K policies on one engine: LoRA revisions (mint) against full-weight swaps (stock SGLang).

The loop is `mint demo rl`'s (sglang_mint/dev/rl_demo.py): K policies, one thread
each, share one base model; each step every policy samples 4 prompts x 4 samples x
8 tokens from the engine (temperature 1.0, with logprobs), takes one Adam step on its
LoRA (r=8 on q,k,v,o,gate,up,down; HF, fp32, CPU) and hands the new policy to the
engine. The step ends when the last policy has handed its policy over.

  mint  --enable-mint with a fresh catalog: sampling pins ``<id>@<rev>``, the handoff
        is MintClient(url).publish(id, peft_model, expected_revision=rev + 1), durable
        as sglang_mint.dev.rl_demo.DURABLE says (recorded in each result)
  full  stock SGLang, no LoRA and no --enable-mint: the handoff merges W + (alpha/r) B A
        of every LoRA module into the base weights; one engine holds one set of
        weights, so before each policy samples, the engine's weights are swapped for
        that policy's merged ones (/update_weights_from_tensor, every weight, the path
        bench/handoff_bench.py's case c measured fastest) and no other policy may swap
        until its batch is sampled. K policies are K full-weight swaps per step, one
        after another (bench/_rl_full_weight.py).

Figures: the wall time of a step, median over --steps timed steps after one warm-up
step, with the median phases of a policy's step (sample, update, publish); peak engine
memory, the PSS of the server's processes sampled every 0.2 s over the loop
(bench/_server_memory.py), for mint with 1 and K policies on the same flags (the same
LoRA slots) and the same sampling load: the one policy samples K times the prompts, so
both engines prefill and hold the same sequences at once (at 6bde11c K=1 sampled a K-th
of K's, and the growth it measured was mostly the larger batches' activations and KV
pages: 40.5 against 114.7 MiB), and sends them as K requests at once, as the K policies do
(at 6160f52 it sent one request of K times the prompts, and K=4 grew 131.0 MiB against 98.1;
four concurrent requests of 16 sequences, by hand on one engine, raised the scheduler's memory
by 41.1 MiB whether they named four adapters or one, so that gap was the requests' shape, not
the adapters). Goal: K policies cost the engine no more than one policy plus K adapters.
Two engines started alike differ in PSS by tens of MiB before any policy runs, more than
K small adapters, so the goal is also checked on each loop's growth (peak less the PSS
at the loop's start). That growth is mostly the scheduler's allocator (glibc's heap and
tens-of-MiB anonymous mappings for activations, made and dropped as batches come and go),
and it varies by tens of MiB from one run of the same loop to the next (35, 61 and 89 MiB
for K=1 in three probes), so the mint loops run --memory-repeats times each, K=1 and K
alternating, and the goal is judged on the median growths, with the spread beside them.
Both engines' logprobs are checked against HF's for the pinned policy, as the demo does. JSON lines: bench/results/rl_loop_bench.jsonl.

    python bench/rl_loop_bench.py            # 2-layer random Llama (hidden 2048, 0.9 GB fp32), K=4, 5 steps
    python bench/rl_loop_bench.py --quick    # the demo's tiny model, K=4, 2 steps
    python bench/rl_loop_bench.py --layers 4 --policies 8
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import append_result
from _handoff_harness import SERVER_FLAGS, get_json, start_server
from _rl_full_weight import FullWeightEngine
from _server_memory import ServerMemory
from sglang_mint.dev import rl_demo
from sglang_mint.dev.rl_demo import MintEngine, generate, make_policies, run_loop, server_flags


def timed(record: dict) -> dict:
    """The loop's record with the warm-up step set aside: step wall times and phases of the timed steps."""
    walls = record["step_wall_s"][1:]
    phases = {}
    for name in ("sample", "update", "publish"):
        values = [s[name] for p in record["per_policy"].values() for s in p["seconds"][1:]]
        phases[name] = round(statistics.median(values), 4)
    return {"median_step_s": round(statistics.median(walls), 4), "min_step_s": round(min(walls), 4),
            "warmup_step_s": record["step_wall_s"][0], "median_phase_s": phases}


def adapter_bytes(policy) -> int:
    return sum(t.numel() * t.element_size() for t in policy.lora_state_dict().values())


class SplitSampling(MintEngine):
    """One policy's sampling sent as ``parts`` requests at once, each of an equal share of its
    prompts: the shape K policies' batches reach the engine in."""

    def __init__(self, url: str, durable: bool, parts: int):
        super().__init__(url, durable)
        self.parts = parts

    def sample(self, policy, name: str, prompt_ids: list[list[int]]):
        share = len(prompt_ids) // self.parts
        chunks = [prompt_ids[i * share:(i + 1) * share] for i in range(self.parts)]
        with ThreadPoolExecutor(self.parts) as pool:
            return [group for part in pool.map(lambda c: generate(self.url, c, lora_path=name), chunks)
                    for group in part]


def run_mint(model_dir: Path, policies: int, steps: int, slots: int, workdir: Path, prompt_repeats: int = 1) -> dict:
    """``prompt_repeats``: each policy samples its prompts that many times over per step, as that
    many requests at once."""
    from sglang_mint.catalog import init_catalog

    catalog = workdir / f"catalog-k{policies}"
    shutil.rmtree(catalog, ignore_errors=True)
    init_catalog(str(catalog), str(model_dir)).close()
    flags = [*SERVER_FLAGS, *server_flags(catalog, policies, slots=slots)]
    with start_server(model_dir, enable_mint=True, extra_args=flags) as server:
        loaded, prompt_ids = make_policies(model_dir, policies)
        with ServerMemory(server.proc.pid) as memory:
            engine = SplitSampling(server.url, rl_demo.DURABLE, prompt_repeats)
            record = run_loop(engine, loaded, prompt_ids * prompt_repeats, steps + 1)
        status = get_json(server.url + "/mint/status")["schedulers"][0]
    shutil.rmtree(catalog, ignore_errors=True)
    return {**record, **timed(record), "durable": rl_demo.DURABLE, "adapter_bytes": adapter_bytes(loaded[0]),
            "samples_per_policy_step": record["samples_per_step"] * prompt_repeats,
            "engine_pss_start_bytes": memory.first_bytes, "engine_pss_peak_bytes": memory.peak_bytes,
            "memory_samples": memory.samples, "pss_growth_by_process": memory.growth_by_process(),
            "mint_status": {k: status.get(k) for k in ("resident", "host_bytes", "host_peak_bytes", "cold_loads",
                                                       "cold_load_p50_s", "evictions")}}


def run_full(model_dir: Path, policies: int, steps: int) -> dict:
    from safetensors.torch import load_file

    with start_server(model_dir, enable_lora=False, enable_mint=False, extra_args=SERVER_FLAGS) as server:
        loaded, prompt_ids = make_policies(model_dir, policies)
        engine = FullWeightEngine(server.url, load_file(str(model_dir / "model.safetensors")))
        with ServerMemory(server.proc.pid) as memory:
            record = run_loop(engine, loaded, prompt_ids, steps + 1)
    swaps = engine.swaps[policies:]  # the warm-up step's swaps set aside
    return {**record, **timed(record), "swaps_per_step": len(engine.swaps) / (steps + 1),
            "median_swap_s": round(statistics.median(swaps), 4) if swaps else None,
            "engine_pss_start_bytes": memory.first_bytes, "engine_pss_peak_bytes": memory.peak_bytes,
            "memory_samples": memory.samples}


def compare(runs: dict, policies: int, growth: dict[int, list[int]] | None = None) -> dict:
    out = {}
    mint, full = runs.get(f"mint_k{policies}"), runs.get(f"full_k{policies}")
    if mint and full:
        out["full_over_mint_step"] = round(full["median_step_s"] / mint["median_step_s"], 2)
    one, many = runs.get("mint_k1"), runs.get(f"mint_k{policies}")
    if one and many and policies > 1:
        adapters = policies * many["adapter_bytes"]
        peak1, peak = one["engine_pss_peak_bytes"], many["engine_pss_peak_bytes"]
        grew1 = peak1 - one["engine_pss_start_bytes"]
        grew = peak - many["engine_pss_start_bytes"]
        out["memory"] = {
            "goal": f"k{policies} <= k1 + {policies} adapters ({policies} x {many['adapter_bytes']:,} bytes)",
            "k1_peak_bytes": peak1, f"k{policies}_peak_bytes": peak,
            "ratio": round(peak / peak1, 4), "allowed_ratio": round((peak1 + adapters) / peak1, 4),
            "met_on_peaks": peak <= peak1 + adapters,
            # Two engines started alike differ before any policy runs (allocator, imports): the
            # growth over each loop leaves that out.
            "idle_difference_bytes": many["engine_pss_start_bytes"] - one["engine_pss_start_bytes"],
            "k1_growth_bytes": grew1, f"k{policies}_growth_bytes": grew,
            "met_on_growth": grew <= grew1 + adapters,
        }
        if growth and len(growth.get(1, [])) > 1:
            median1, median = statistics.median(growth[1]), statistics.median(growth[policies])
            out["memory"].update({
                "k1_growth_bytes_runs": growth[1], f"k{policies}_growth_bytes_runs": growth[policies],
                "k1_median_growth_bytes": median1, f"k{policies}_median_growth_bytes": median,
                # how far apart two runs of one configuration came out: a difference smaller than
                # this is not told from noise
                "growth_spread_bytes": max(max(g) - min(g) for g in (growth[1], growth[policies])),
                "met_on_median_growth": median <= median1 + adapters,
            })
    return out


def print_summary(record: dict) -> None:
    mib = 2 ** 20
    print(f"\nRL loop, {record['policies']} policies on one engine, {record['timed_steps']} timed steps "
          f"(model {record['model']['name']}):")
    for name, r in record["runs"].items():
        line = (f"  {name:<8} step median {r['median_step_s']:.3f} s (min {r['min_step_s']:.3f}, warm-up "
                f"{r['warmup_step_s']:.3f})  phases {r['median_phase_s']}  engine PSS peak "
                f"{r['engine_pss_peak_bytes'] / mib:,.0f} MiB (start {r['engine_pss_start_bytes'] / mib:,.0f})  "
                f"largest logprob gap {r['max_logprob_gap']:.1e}")
        if "median_swap_s" in r:
            line += f"  full-weight swap median {r['median_swap_s']} s"
        print(line)
    ratios = record["ratios"]
    if "full_over_mint_step" in ratios:
        print(f"  full / mint step time: {ratios['full_over_mint_step']}x")
    if "memory" in ratios:
        m = ratios["memory"]
        k = record["policies"]
        print(f"  engine memory, peak k{k} / k1: {m['ratio']} (goal {m['goal']}: at most {m['allowed_ratio']}; "
              f"met: {m['met_on_peaks']}); the two idle engines differed by {m['idle_difference_bytes'] / mib:+.1f} "
              f"MiB before the loops; growth over the loop k1 {m['k1_growth_bytes'] / mib:.1f} MiB, k{k} "
              f"{m[f'k{k}_growth_bytes'] / mib:.1f} MiB (met: {m['met_on_growth']})")
        if "met_on_median_growth" in m:
            print(f"  median growth over {len(m['k1_growth_bytes_runs'])} runs each: k1 "
                  f"{m['k1_median_growth_bytes'] / mib:.1f} MiB, k{k} {m[f'k{k}_median_growth_bytes'] / mib:.1f} MiB, "
                  f"spread of one configuration {m['growth_spread_bytes'] / mib:.1f} MiB "
                  f"(met on medians: {m['met_on_median_growth']})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--policies", type=int, default=4, help="K, policies trained at once (default 4)")
    p.add_argument("--steps", type=int, default=5, help="timed steps after one warm-up step (default 5)")
    p.add_argument("--layers", type=int, default=2, help="layers of the random Llama (default 2: 0.9 GB fp32)")
    p.add_argument("--tiny", action="store_true", help="the demo's tiny model (hidden 128) instead")
    p.add_argument("--cases", default="mint,full", help="mint (K=1 and K), full (K); default both")
    p.add_argument("--quick", action="store_true", help="smoke run: the tiny model, 2 timed steps")
    p.add_argument("--memory-repeats", type=int, default=3,
                   help="runs of each mint loop, K=1 and K alternating, for the memory goal (default 3)")
    a = p.parse_args()
    if a.quick:
        a.tiny, a.steps, a.memory_repeats = True, 2, 1
    cases = set(a.cases.split(","))

    import torch
    import torch.multiprocessing as tmp

    from sglang_mint.dev.demo import demo_assets
    from sglang_mint.dev.random_llama import random_llama_dir

    torch.set_num_threads(1)  # K policy threads beside the server on a small machine
    tmp.set_sharing_strategy("file_system")  # see bench/handoff_bench.py: the engine must open the segments
    if a.tiny:
        model_dir, model = demo_assets()[0], {"name": "tiny (hidden 128, 2 layers)"}
    else:
        model_dir = random_llama_dir(layers=a.layers)
        model = {"name": f"random Llama, hidden 2048, {a.layers} layers", "layers": a.layers}
    workdir = Path(tempfile.mkdtemp(prefix="rl-loop-bench-"))
    slots = max(4, 2 * a.policies)  # the same LoRA slots for K=1 and K: only the policies differ
    t0 = time.perf_counter()
    runs = {}
    growth: dict[int, list[int]] = {}
    if "mint" in cases:  # before full: that one imports sglang into this process
        ks = [1, a.policies] if a.policies > 1 else [1]
        for repeat in range(a.memory_repeats if a.policies > 1 else 1):
            for k in ks if repeat % 2 == 0 else ks[::-1]:
                # K=1 samples K times the prompts: the same sequences in flight, only the adapters differ
                run = run_mint(model_dir, k, a.steps, slots, workdir, prompt_repeats=a.policies if k == 1 else 1)
                runs.setdefault(f"mint_k{k}", run)  # step times and samples: the first run of each
                growth.setdefault(k, []).append(run["engine_pss_peak_bytes"] - run["engine_pss_start_bytes"])
                by_process = ", ".join(f"{name} {b / 2 ** 20:.1f}" for name, b in run["pss_growth_by_process"].items())
                print(f"mint k={k} (run {repeat + 1}): step {run['median_step_s']} s, engine PSS growth "
                      f"{growth[k][-1] / 2 ** 20:.1f} MiB ({by_process})", flush=True)
    if "full" in cases:
        runs[f"full_k{a.policies}"] = run_full(model_dir, a.policies, a.steps)
        print(f"full k={a.policies}: step {runs[f'full_k{a.policies}']['median_step_s']} s", flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    record = append_result("rl_loop_bench", {
        "bench": "rl_loop_bench", "quick": a.quick, "model": model, "policies": a.policies,
        "timed_steps": a.steps, "lora_slots": slots, "runs": runs, "memory_repeats": a.memory_repeats,
        "ratios": compare(runs, a.policies, growth),
        "wall_s": round(time.perf_counter() - t0, 1)})
    print_summary(record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
