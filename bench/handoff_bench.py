"""Trainer -> server handoff: new LoRA weights in the trainer's memory -> first token of the new policy.

One run, the same machine, a random Llama whose fp32 weights are 2.7 GB
(hidden 2048, intermediate 5632, 12 layers, 16/4 heads, vocab 32000), LoRA on
q,k,v,o,gate,up,down at ranks 8 and 64. Every repetition is a new training
step: the trainer draws a new random B (A stays), and the clock starts with
that state dict in memory. It stops when a 1-token greedy completion of the new
policy returns (the first token). Repetition k publishes the same weights in
every case, so the served logprobs of case a, b and c must agree rep by rep.

  a  mint      --enable-mint --mint-catalog: MintClient(url).publish(id, state_dict,
               lora_config=...) (multipart POST /mint/adapters/<id>/revisions), then
               a completion with model=<id>. Two ways:
                 warm     the client's default: the server starts loading the new
                          revision before publish returns (ratios use this one)
                 no-warm  publish(..., warm=False): the first request loads it
                 durable-false  publish(..., durable=False), an RL step: answered once
                          the revision is recorded and handed over in shared memory,
                          its blob stored after, loaded by the first request (ratios
                          use this one)
                 durable-false-warm  the same with warm=True: the server loads it at
                          once with a one-token request (on a CPU that request's own
                          forward competes with the first request's)
  b  stock     stock SGLang LoRA (--enable-lora --max-lora-rank R, no --enable-mint):
               POST /unload_lora_adapter of the previous step's name, then
               POST /load_lora_adapter_from_tensors under a new name (what verl
               and slime do every step), then a completion with model=<served>:<name>.
               The tensors travel as SGLang's MultiprocessingSerializer payload
               (ForkingPickler, base64) in two ways:
                 shm    by reference: the tensors move to shared memory (torch's
                        file_system strategy) and the payload names the segments;
                        the CPU analogue of the CUDA-IPC handles verl sends
                 bytes  by value: a plain pickle of the tensors, what crossing
                        hosts needs (SGLang's SafeUnpickler accepts both)
  c  full      stock SGLang, no LoRA: the trainer merges W + (alpha/r) B A into a
               copy of the base weights, then
                 disk    writes the whole merged checkpoint as safetensors and
                         POST /update_weights_from_disk with its folder
                 tensor  POST /begin_weight_update, /update_weights_from_tensor
                         (all weights, shm payload), /end_weight_update
               and a completion of the base model.

Each case first runs one untimed warm-up step. A step during which another
SGLang server ran on the machine is set aside and redone (with fresh weights)
once that server has ended; samples still contended say so. Phases are timed, and
"warm" is a 1-token request of the same length (prompt reversed, so no prefix
is cached) to the new policy once it is in place: the serving cost alone. An
HF+PEFT reference (separate process) checks the last step's first-token
logprob. Ratios: a/b (goal <= 1.2, against the faster b variant), c/a (goal
>= 20). JSON lines: bench/results/handoff_bench.jsonl.

    python bench/handoff_bench.py                 # all cases, ranks 8 64, 5 reps
    python bench/handoff_bench.py --quick         # 2-layer model, rank 8, 2 reps
    python bench/handoff_bench.py --cases b,c --ranks 8
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

# The trainer (_handoff_trainer), the timed steps and servers (_handoff_harness) and what is made of
# the measurements (_handoff_results) live beside this script; here: the three cases and main.
from _common import append_result
from _handoff_harness import SERVED, SERVER_FLAGS, get_json, lora_server, post, run_reps, start_server
from _handoff_results import cross_case_agreement, print_summary, ratios, reference_check
from _handoff_trainer import B_STD, MODULES, Trainer, serialize
from sglang_mint.dev.random_llama import param_count, random_llama_dir

PROMPT = "the quick brown fox jumps over the lazy dog"


# --------------------------------------------------------------------------- the cases


def case_mint(model_dir, trainer: Trainer, prompt_ids, reps, workdir: Path, variants: list[str]) -> dict:
    """Case a on one server for this rank. Variants: ``warm`` is the client's default call
    (the server starts loading the new revision before publish returns), ``no-warm`` passes
    warm=False (the first request loads it). Each variant publishes to its own adapter id."""
    try:
        from sglang_mint.client import MintClient
    except ImportError as e:
        return {v: {"skipped": f"sglang_mint.client is not importable: {e}"} for v in variants}
    from sglang_mint.catalog import init_catalog

    catalog = workdir / f"catalog-r{trainer.rank}"
    shutil.rmtree(catalog, ignore_errors=True)
    init_catalog(str(catalog), str(model_dir)).close()
    out = {}
    with lora_server(model_dir, trainer.rank, enable_mint=True, extra=["--mint-catalog", str(catalog)]) as server:
        mint = MintClient(server.url)

        def handoff_with(variant, revisions):
            adapter_id = f"handoff/r{trainer.rank}-{variant}"
            kwargs = {"warm": {}, "no-warm": {"warm": False}, "durable-false": {"durable": False},
                      "durable-false-warm": {"durable": False, "warm": True}}[variant]

            def handoff(k, sd):
                t0 = time.perf_counter()
                pub = mint.publish(adapter_id, sd, lora_config=trainer.config, **kwargs)
                revisions.append(pub.revision)
                return {"publish": time.perf_counter() - t0}, pub.adapter_id
            return handoff

        for variant in variants:
            revisions = []
            out[variant] = run_reps(trainer, handoff_with(variant, revisions), server, prompt_ids, reps)
            out[variant]["revisions"] = revisions
            # the scheduler's own cold-read timings (cumulative over this server's variants)
            status = get_json(server.url + "/mint/status")
            out[variant]["mint_status"] = [{k: sch.get(k) for k in ("cold_loads", "cold_load_p50_s", "cold_load_p99_s")}
                                           for sch in status.get("schedulers", [])]
            print(f"r{trainer.rank} mint/{variant}: median {out[variant]['median_s']} s", flush=True)
    return out


def case_stock(model_dir, trainer: Trainer, prompt_ids, reps, payloads: list[str]) -> dict:
    """Case b on one server for this rank: each payload kind in turn, names never reused."""
    out = {}
    with lora_server(model_dir, trainer.rank, enable_mint=False) as server:
        names = []

        def handoff_with(how):
            def handoff(k, sd):
                t0 = time.perf_counter()
                if names:
                    post(server.url + "/unload_lora_adapter", {"lora_name": names[-1]})
                t1 = time.perf_counter()
                payload = serialize(sd, how)
                t2 = time.perf_counter()
                name = f"policy-r{trainer.rank}-{how}-{k}"
                post(server.url + "/load_lora_adapter_from_tensors",
                     {"lora_name": name, "config_dict": trainer.config, "serialized_named_tensors": [payload]})
                t3 = time.perf_counter()
                names.append(name)
                return {"unload": t1 - t0, "serialize": t2 - t1, "load": t3 - t2}, f"{SERVED}:{name}"
            return handoff

        for how in payloads:
            out[how] = {"payload_mb": round(len(serialize(trainer.step(0), how)) / 1e6, 2),
                        **run_reps(trainer, handoff_with(how), server, prompt_ids, reps)}
            print(f"r{trainer.rank} stock/{how}: median {out[how]['median_s']} s", flush=True)
    return out


def case_full(model_dir, trainers: list[Trainer], prompt_ids, reps, workdir: Path, modes: list[str]) -> dict:
    """Case c on one server (no LoRA): for each rank's trainer, each update path in turn."""
    out = {f"r{t.rank}": {} for t in trainers}
    with start_server(model_dir, enable_lora=False, enable_mint=False, extra_args=SERVER_FLAGS) as server:
        written = []
        for trainer in trainers:
            def disk(k, sd, trainer=trainer):
                from safetensors.torch import save_file

                t0 = time.perf_counter()
                merged = trainer.merged(sd)
                t1 = time.perf_counter()
                folder = workdir / f"merged-r{trainer.rank}-{k}"
                folder.mkdir(parents=True, exist_ok=True)
                save_file(merged, str(folder / "model.safetensors"), metadata={"format": "pt"})
                del merged
                t2 = time.perf_counter()
                post(server.url + "/update_weights_from_disk", {"model_path": str(folder)})
                t3 = time.perf_counter()
                written.append(folder)
                while len(written) > 1:  # the server has read the older one
                    shutil.rmtree(written.pop(0), ignore_errors=True)
                return {"merge": t1 - t0, "write": t2 - t1, "update": t3 - t2}, SERVED

            def tensor(k, sd, trainer=trainer):
                t0 = time.perf_counter()
                merged = trainer.merged(sd)
                t1 = time.perf_counter()
                payload = serialize(list(merged.items()), "shm")
                t2 = time.perf_counter()
                post(server.url + "/begin_weight_update", {})
                try:
                    post(server.url + "/update_weights_from_tensor", {"serialized_named_tensors": [payload]})
                finally:
                    post(server.url + "/end_weight_update", {})
                del merged
                t3 = time.perf_counter()
                return {"merge": t1 - t0, "serialize": t2 - t1, "update": t3 - t2}, SERVED

            for mode in modes:
                fn = {"disk": disk, "tensor": tensor}[mode]
                try:
                    res = run_reps(trainer, fn, server, prompt_ids, reps)
                except Exception as e:  # record why a path does not work here, keep the others
                    res = {"failed": f"{type(e).__name__}: {e}"[:3000]}
                out[f"r{trainer.rank}"][mode] = res
                print(f"r{trainer.rank} full/{mode}: {res.get('median_s', res.get('failed'))}", flush=True)
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
    return out


# --------------------------------------------------------------------------- checks


def probe_fd_strategy(model_dir, trainer: Trainer) -> str:
    """Does MultiprocessingSerializer's CPU default (file_descriptor sharing) reach the server?

    Measured: no. The fds travel through the sender's multiprocessing resource sharer, which
    only answers processes holding the sender's authkey; the scheduler's authkey differs, its
    unpickler raises AuthenticationError, and that exception kills the whole server."""
    import torch.multiprocessing as tmp

    tmp.set_sharing_strategy("file_descriptor")
    try:
        with lora_server(model_dir, trainer.rank, enable_mint=False) as server:
            payload = serialize(trainer.step(0), "shm")
            try:
                post(server.url + "/load_lora_adapter_from_tensors",
                     {"lora_name": "probe", "config_dict": trainer.config, "serialized_named_tensors": [payload]})
                return "works"
            except Exception as e:  # noqa: BLE001 - the point is to record what happens
                time.sleep(8)  # let a dying server finish, so its log says why
                alive = server.proc.poll() is None
                cause = [ln for ln in server.log_tail(200).splitlines() if "Error" in ln][-1:]
                return (f"fails: {type(e).__name__}: {str(e)[:300]}; server {'alive' if alive else 'DEAD'}; "
                        f"server log: {cause[0].strip()[:300] if cause else '(nothing)'}")
    finally:
        tmp.set_sharing_strategy("file_system")


# --------------------------------------------------------------------------- main


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", default="a,b,c", help="which cases, comma-separated: a (mint publish), b (stock "
                   "load_lora_adapter_from_tensors), c (stock full-weight update); default a,b,c")
    p.add_argument("--ranks", default="8,64", help="LoRA ranks, comma-separated (default 8,64)")
    p.add_argument("--reps", type=int, default=5, help="timed steps per case after one warm-up (default 5)")
    p.add_argument("--layers", type=int, default=12, help="model layers (default 12: 2.7 GB fp32)")
    p.add_argument("--mint-publish", default="durable-false,warm,no-warm",
                   help="case a: durable-false (durable=False, an RL step), warm (the client's default publish: "
                   "stored before the answer, loaded at once), no-warm (warm=False), durable-false-warm; default the first "
                   "three")
    p.add_argument("--stock-payloads", default="shm,bytes", help="case b payloads: shm, bytes (default both)")
    p.add_argument("--full-modes", default="disk,tensor", help="case c paths: disk, tensor (default both)")
    p.add_argument("--probe-fd-sharing", action="store_true",
                   help="case b: also try MultiprocessingSerializer with torch's default CPU sharing "
                   "(file descriptors) on a server of its own; it kills that server (see probe_fd_strategy)")
    p.add_argument("--no-reference", action="store_true", help="skip the HF+PEFT logprob check")
    p.add_argument("--quick", action="store_true", help="smoke run: 2-layer model (0.9 GB), rank 8, 2 reps")
    p.add_argument("--workdir", default=None, help="folder for catalogs and merged checkpoints (default: a temp dir)")
    a = p.parse_args()
    if a.quick:
        a.layers, a.ranks, a.reps = 2, "8", 2
    cases = set(a.cases.split(","))
    ranks = [int(r) for r in a.ranks.split(",")]
    payloads = a.stock_payloads.split(",")
    modes = a.full_modes.split(",")
    mint_variants = a.mint_publish.split(",")

    import torch
    import torch.multiprocessing as tmp
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    torch.set_num_threads(2)
    # MultiprocessingSerializer's CPU default (file_descriptor) hands the fds over through a
    # multiprocessing resource sharer that only processes sharing our authkey may use; the
    # file_system strategy names shared-memory segments any local process can open.
    tmp.set_sharing_strategy("file_system")
    model_dir = random_llama_dir(layers=a.layers)
    shape = json.loads((model_dir / ".complete").read_text())
    prompt_ids = AutoTokenizer.from_pretrained(model_dir)(PROMPT)["input_ids"]
    base = load_file(str(model_dir / "model.safetensors")) if "c" in cases else None
    workdir = Path(a.workdir or tempfile.mkdtemp(prefix="handoff-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    trainers = [Trainer(model_dir, rank, base) for rank in ranks]
    results = {f"r{t.rank}": {} for t in trainers}
    notes = {}
    if "b" in cases and a.probe_fd_sharing:
        notes["fd_sharing_probe"] = probe_fd_strategy(model_dir, trainers[0])
        print("file_descriptor sharing:", notes["fd_sharing_probe"], flush=True)
    # Case c writes gigabytes of merged checkpoints: it runs last, and every case starts once the
    # page cache has written back what the one before it left (os.sync): at 54da9ea, with c
    # between b and a, the writeback of c's checkpoints lasted into a, whose r64 median rose
    # from 0.71 to 0.80 s (min 0.60).
    if "b" in cases:
        for t in trainers:
            os.sync()
            results[f"r{t.rank}"]["stock"] = case_stock(model_dir, t, prompt_ids, a.reps, payloads)
    if "a" in cases:
        for t in trainers:
            os.sync()
            results[f"r{t.rank}"]["mint"] = case_mint(model_dir, t, prompt_ids, a.reps, workdir, mint_variants)
    if "c" in cases:
        os.sync()
        for rk, res in case_full(model_dir, trainers, prompt_ids, a.reps, workdir, modes).items():
            results[rk]["full"] = res
    for res in results.values():
        res["cross_case_max_logprob_gap"] = cross_case_agreement(dict(res))
        res["ratios"] = ratios(res)

    reference = None if a.no_reference else reference_check(model_dir, trainers, a.reps, prompt_ids, results, workdir)
    lora_mb = {f"r{t.rank}": round(sum(x.numel() * 4 for x in t.step(0).values()) / 1e6, 1) for t in trainers}
    params = param_count(**{k: shape[k] for k in ("hidden", "intermediate", "layers", "heads", "kv_heads", "vocab")})
    notes["shm_payload"] = ("torch sharing strategy file_system; the CPU default (file_descriptor) cannot reach "
                            "an unrelated process, see --probe-fd-sharing")
    record = append_result("handoff_bench", {
        "bench": "handoff_bench", "quick": a.quick,
        "model": {**shape, "params": params, "fp32_gb": round(params * 4 / 1e9, 2)},
        "lora": {"modules": MODULES, "alpha": "2r", "b_std": B_STD, "fp32_mb": lora_mb},
        "reps": a.reps, "prompt_tokens": len(prompt_ids), "cases": sorted(cases), "results": results,
        "reference": reference, "notes": notes, "wall_s": round(time.perf_counter() - t_start, 1),
    })
    print_summary(record)
    if not a.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
