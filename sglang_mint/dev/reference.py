"""Greedy tokens and their logprobs from HF transformers + PEFT, in fp32.

Run it in its own process: importing sglang into a process changes HF/torch
numerics there by about 5e-3. ``run_reference`` does that for you:

    run_reference(sys.executable, model_dir, [
        {"adapter": "/path/a1", "prompt_ids": [5, 6, 7], "max_tokens": 8},
        {"adapter": None, "prompt_ids": [5, 6, 7], "max_tokens": 8},   # base model
    ])
    -> [{"tokens": [...], "logprobs": [...]}, ...]

Results are kept under ``$MINT_CACHE_DIR/references``, one file per job, named by the
sha256 of everything they depend on: the bytes of every file of the model, the adapter's
weights and config, the prompt, ``max_tokens`` and the torch, transformers and peft
versions. A job seen before is read back; only new ones run.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from sglang_mint.config import default_cache_dir


def greedy(model, prompt_ids: list[int], max_tokens: int) -> dict:
    import torch

    ids = list(prompt_ids)
    tokens, logprobs = [], []
    with torch.no_grad():
        for _ in range(max_tokens):
            logits = model(torch.tensor([ids])).logits[0, -1].float()
            lp = torch.log_softmax(logits, dim=-1)
            tok = int(torch.argmax(lp))
            tokens.append(tok)
            logprobs.append(float(lp[tok]))
            ids.append(tok)
    return {"tokens": tokens, "logprobs": logprobs}


def run_jobs(model_dir: str, jobs: list[dict]) -> list[dict]:
    import torch
    from transformers import AutoModelForCausalLM

    results = []
    for job in jobs:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if job.get("adapter"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, job["adapter"])
        model.eval()
        results.append(greedy(model, job["prompt_ids"], job["max_tokens"]))
    return results


def folder_digest(folder) -> str:
    """sha256 over a folder's file names and bytes (subfolders included, in name order)."""
    h = hashlib.sha256()
    root = Path(folder)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        h.update(b"\0")
    return h.hexdigest()


# Config fields PEFT holds as sets and writes as lists in the set's order, which changes from one process to the next
SET_FIELDS = ("target_modules", "exclude_modules")
# Config fields whose order PEFT reads: the first pattern that matches a module gives its alpha or rank
ORDERED_FIELDS = ("alpha_pattern", "rank_pattern")


def adapter_digest(folder) -> str:
    """sha256 of what a PEFT adapter computes: its weights and its config without
    ``base_model_name_or_path`` (where the base lay when it was written; the base's own bytes
    are in the key separately), with its set fields in order (each run wrote them in another, so
    every fresh adapter missed the cache) and its pattern fields in theirs (kept as pairs: the keys are
    sorted when the config is written out). PEFT's README is not read."""
    root = Path(folder)
    if not (root / "adapter_model.safetensors").is_file():
        return folder_digest(root)
    config = json.loads((root / "adapter_config.json").read_text())
    config.pop("base_model_name_or_path", None)
    for name in SET_FIELDS:
        if isinstance(config.get(name), list):
            config[name] = sorted(config[name])
    for name in ORDERED_FIELDS:
        if isinstance(config.get(name), dict):
            config[name] = list(config[name].items())
    h = hashlib.sha256(json.dumps(config, sort_keys=True).encode() + b"\0")
    with open(root / "adapter_model.safetensors", "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _job_key(model: str, job: dict, versions: str) -> str:
    adapter = job.get("adapter")
    fields = [model, adapter_digest(adapter) if adapter else "base", json.dumps(job["prompt_ids"]),
              str(job["max_tokens"]), versions]
    return hashlib.sha256("\n".join(fields).encode()).hexdigest()


def run_reference(python: str, model_dir, jobs: list[dict]) -> list[dict]:
    """Run ``jobs`` in a fresh interpreter (``python``) and return their results; jobs run
    before with the same inputs are read from the cache instead."""
    cache = default_cache_dir() / "references"
    versions = " ".join(f"{p}={version(p)}" for p in ("torch", "transformers", "peft"))
    model = folder_digest(model_dir)
    keys = [_job_key(model, job, versions) for job in jobs]
    results: dict[str, dict] = {}
    for key in keys:
        try:
            results[key] = json.loads((cache / f"{key}.json").read_text())
        except (OSError, ValueError):
            pass
    todo = {key: job for key, job in zip(keys, jobs) if key not in results}
    if todo:
        out = subprocess.run([python, "-m", __name__, str(model_dir)], input=json.dumps(list(todo.values())),
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise RuntimeError(f"reference run failed ({out.returncode}):\n{out.stderr[-4000:]}")
        cache.mkdir(parents=True, exist_ok=True)
        for key, result in zip(todo, json.loads(out.stdout.strip().splitlines()[-1])):
            results[key] = result
            tmp = cache / f"{key}.{os.getpid()}.tmp"
            tmp.write_text(json.dumps(result))
            os.replace(tmp, cache / f"{key}.json")  # whole or absent, with tests in parallel
    return [results[key] for key in keys]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sglang_mint.dev.reference MODEL_DIR < jobs.json", file=sys.stderr)
        return 2
    print(json.dumps(run_jobs(argv[0], json.load(sys.stdin))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
