"""Greedy tokens and their logprobs from HF transformers + PEFT, in fp32.

Run it in its own process: importing sglang into a process changes HF/torch
numerics there by about 5e-3. ``run_reference`` does that for you:

    run_reference(sys.executable, model_dir, [
        {"adapter": "/path/a1", "prompt_ids": [5, 6, 7], "max_tokens": 8},
        {"adapter": None, "prompt_ids": [5, 6, 7], "max_tokens": 8},   # base model
    ])
    -> [{"tokens": [...], "logprobs": [...]}, ...]
"""

from __future__ import annotations

import json
import subprocess
import sys


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


def run_reference(python: str, model_dir, jobs: list[dict]) -> list[dict]:
    """Run ``jobs`` in a fresh interpreter (``python``) and return their results."""
    out = subprocess.run(
        [python, "-m", __name__, str(model_dir)], input=json.dumps(jobs), capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"reference run failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sglang_mint.dev.reference MODEL_DIR < jobs.json", file=sys.stderr)
        return 2
    print(json.dumps(run_jobs(argv[0], json.load(sys.stdin))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
