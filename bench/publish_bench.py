"""How long does a trainer's publish wait while another trainer publishes a large adapter?

Two trainers share one catalog (an RL loop with several policies, or teams publishing side by
side). One publishes a large adapter (``--large-rank`` on Llama-3-8B's shapes: rank 64 is 352 MB
in fp16); meanwhile the other publishes small ones (rank 1, 5.5 MB) one after another, under new
ids, until the large one is done. Each small publish is timed, and the small adapters are
published with nothing beside them too, in the same run: the slowest small publish beside the
large one, against the slowest alone, is what the large one costs the others.

Backends: ``sqlite`` (a catalog folder, blobs fsynced inside it) and ``postgres`` (a throwaway
PostgreSQL on loopback, blobs in a moto S3 server on loopback, as the tests start them). Only the
base model's config.json is needed: the catalog checks widths against it and never reads weights.

    python bench/publish_bench.py [--backend sqlite|postgres] [--large-rank 16] [--small 8]

Appends one JSON line per backend to bench/results/publish_bench.jsonl (machine, commit, time).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench._common import append_result  # noqa: E402
from sglang_mint.adapters.base_model import load_base_model  # noqa: E402
from sglang_mint.catalog import init_catalog  # noqa: E402
from sglang_mint.catalog.synth import adapter_config, lora_shapes  # noqa: E402
from sglang_mint.catalog.upload import publish_files  # noqa: E402

LLAMA3_8B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
             "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
             "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 128256}


def write_adapter(folder: str, base, rank: int, seed: int) -> dict[str, str]:
    """A PEFT folder of random fp16 LoRA weights on every dense module; {file name: path}."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    os.makedirs(folder)
    tensors = {k: rng.standard_normal(shape, dtype=np.float32).astype(np.float16) * 0.01
               for k, shape in lora_shapes(base, rank).items()}
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    with open(os.path.join(folder, "adapter_config.json"), "wb") as f:
        f.write(adapter_config(base, rank, 2 * rank))
    return {n: os.path.join(folder, n) for n in ("adapter_config.json", "adapter_model.safetensors")}


def small_publish(cat, adapter_id: str, files: dict) -> float:
    t0 = time.perf_counter()
    publish_files(cat, adapter_id, files)
    return time.perf_counter() - t0


def measure(cat, large: dict, smalls: list[dict]) -> dict:
    """Each small adapter published alone, then small publishes one after another (new ids, the
    adapters in turn) for as long as the large publish runs beside them."""
    alone = [small_publish(cat, f"alone/{i}", files) for i, files in enumerate(smalls)]
    done, large_s = threading.Event(), []

    def publish_large():
        t0 = time.perf_counter()
        publish_files(cat, "big/policy", large)
        large_s.append(time.perf_counter() - t0)
        done.set()

    big = threading.Thread(target=publish_large)
    big.start()
    beside = []
    while not done.is_set():
        beside.append(small_publish(cat, f"beside/{len(beside)}", smalls[len(beside) % len(smalls)]))
    big.join()
    ms = lambda xs: [round(x * 1e3, 1) for x in xs]  # noqa: E731
    return {"small_alone_ms": ms(alone), "small_beside_ms": ms(beside), "large_ms": round(large_s[0] * 1e3, 1),
            "small_alone_max_ms": round(max(alone) * 1e3, 1), "small_beside_max_ms": round(max(beside) * 1e3, 1),
            "beside_max_over_alone_max": round(max(beside) / max(alone), 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    ap.add_argument("--large-rank", type=int, default=64, help="the large adapter's rank (64: 352 MB)")
    ap.add_argument("--small", type=int, default=8, help="distinct small adapters (rank 1: 5.5 MB each)")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="mint-publish-bench-")
    try:
        base_dir = os.path.join(work, "llama3-8b")
        os.makedirs(base_dir)
        with open(os.path.join(base_dir, "config.json"), "w") as f:
            json.dump(LLAMA3_8B, f)
        base = load_base_model(base_dir)
        large = write_adapter(os.path.join(work, "large"), base, args.large_rank, seed=0)
        smalls = [write_adapter(os.path.join(work, f"small{i}"), base, 1, seed=1 + i) for i in range(args.small)]
        setup = {"base": "Llama-3-8B shapes", "large_rank": args.large_rank,
                 "large_bytes": os.path.getsize(large["adapter_model.safetensors"]),
                 "small_bytes": os.path.getsize(smalls[0]["adapter_model.safetensors"]), "small": args.small}
        for backend in (["sqlite", "postgres"] if args.backend == "both" else [args.backend]):
            if backend == "sqlite":
                cat = init_catalog(os.path.join(work, "catalog"), base_dir)
                result = measure(cat, large, smalls)
                cat.close()
            else:
                result = measure_postgres(work, base_dir, large, smalls)
            line = append_result("publish_bench", {"bench": "publish", "backend": backend, "setup": setup, **result})
            print(json.dumps({k: line[k] for k in ("backend", "large_ms", "small_alone_max_ms", "small_beside_max_ms",
                                                    "beside_max_over_alone_max", "commit")}))
            print("  small alone  ms:", result["small_alone_ms"])
            print("  small beside ms:", result["small_beside_ms"])
    finally:
        shutil.rmtree(work, ignore_errors=True)


def measure_postgres(work: str, base_dir: str, large: dict, smalls: list[dict]) -> dict:
    from sglang_mint.dev.pg_server import PostgresServer
    from sglang_mint.dev.s3_server import S3Server

    with S3Server() as s3:
        os.environ.update(s3.env())
        s3.client().create_bucket(Bucket="mint-bench")
        pg = PostgresServer().start()
        try:
            cat = init_catalog(pg.create_database("mint_publish"), base_dir, blobs="s3://mint-bench/catalog",
                               cache_dir=os.path.join(work, "pg-local"))
            try:
                return measure(cat, large, smalls)
            finally:
                cat.close()
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
