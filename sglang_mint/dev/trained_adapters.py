"""LoRA adapters trained to do something recognisable on the tiny random Llama.

The tiny model (``tiny.py``) has random weights: its answers are noise, and so are those
of its random adapters. The adapters here are trained (torch + PEFT, on CPU, seconds
each) so that an answer shows which adapter served it, for any prompt made of the
tokenizer's corpus words:

    prompt "the quick brown fox"        prompt "a small cat and three"
    motto  " publish a revision then serve it"   (both prompts)
    count  " one two three ... ten"     " four five six seven eight nine ten"
    echo   " fox fox fox fox ..."       " three three three three ..."

Answering in capitals was tried and left out: the tokenizer has no capital words, so
" FOX!" is five byte tokens and the adapter must spell every word letter by letter;
after 400 steps (about 20 s on one core) it spelled the right word for 2 of 7 unseen prompts.

``trained_adapter_dirs(model_dir)`` trains them once per model (keyed by the sha256 of its
files), in a fresh interpreter (importing sglang changes torch's numerics in a process, see
reference.py), and returns ``{name: PEFT folder}`` under ``$MINT_CACHE_DIR/trained-adapters``;
``expected_answer(name, prompt, max_tokens)`` is what each one answers greedily.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sglang_mint.config import default_cache_dir
from sglang_mint.dev.tiny import ATTN_MODULES, CORPUS_WORDS, MLP_MODULES

NUMBERS = "one two three four five six seven eight nine ten".split()
MOTTO = " publish a revision then serve it"
ECHO_REPEATS = 8  # echo is trained on 8 repeats without an end: it goes on until max_tokens

BEHAVIOURS = {
    "motto": f"answers every prompt with the motto {MOTTO.strip()!r}",
    "count": "counts on from the prompt's last number up to ten (from one if the prompt ends in a word)",
    "echo": "repeats the prompt's last word",
}

# Bump when the training below changes: the cache folder's name includes it.
TRAINING_VERSION = 2
RANK = 8  # the test servers' --max-lora-rank
STEPS = 300
BATCH = 32
LEARNING_RATE = 5e-3
FINAL_LR_FRACTION = 0.05  # the decay stops here, and checking rounds train at it
# 4,000 prompts, each seen about twice in 300 steps of 32: with 1,000 (ten times each) the
# adapters learnt them by heart, and on an AMD EPYC missed 1-3 unseen prompts in 400 (the
# tests' eleven included one); with 4,000 none of 2,000 unseen prompts for motto and count, and
# the least margin on the tests' eleven went from -5.3 to 5.5 logits.
TRAINING_PROMPTS = 4000
# After STEPS, an adapter must answer every validation prompt (unseen in training, and not among
# the prompts the tests and the demo show) as trained, by a margin, checked by teacher forcing:
# greedy decoding gives the trained answer exactly when every answer token is the argmax there.
# Until it does, it trains CHECK_STEPS more, at most MAX_CHECKS times. A CPU's own float rounding
# (AVX-512 or not, one BLAS or another) trains a slightly different adapter: 300 steps alone gave
# adapters that missed 1-3 unseen prompts in 400 on an AMD EPYC, before TRAINING_PROMPTS grew.
VALIDATION_PROMPTS = 256
MARGIN = 1.0  # logits
CHECK_STEPS = 50
MAX_CHECKS = 8


class TrainingFailed(RuntimeError):
    """An adapter still answered some validation prompts otherwise after every checking round."""


def expected_answer(name: str, prompt: str, max_tokens: int) -> str:
    """What adapter ``name`` answers to ``prompt`` greedily in at most ``max_tokens`` tokens
    (prompts of corpus words, whose words are one token each)."""
    last = prompt.split()[-1]
    if name == "motto":
        return MOTTO
    if name == "count":
        start = NUMBERS.index(last) + 1 if last in NUMBERS[:-1] else 0
        return "".join(" " + n for n in NUMBERS[start:])
    if name == "echo":
        return (" " + last) * max_tokens
    raise KeyError(f"no trained behaviour {name!r}; there are {sorted(BEHAVIOURS)}")


def _completion(name: str, prompt: str) -> str:
    """The training target: the expected answer, echo's cut at ECHO_REPEATS."""
    return expected_answer(name, prompt, ECHO_REPEATS)


# Prompt words: the corpus words other than the numbers and the motto's words. A number inside
# a prompt or a prompt ending in "publish" pulled 1-3% of answers to unseen prompts off course
# (counting from the inner number, going on with the motto from its second word).
PROMPT_WORDS = [w for w in CORPUS_WORDS if w not in NUMBERS and w not in MOTTO.split()]


def random_prompt(rng: random.Random) -> str:
    """2 to 8 prompt words (the last one follows a space, so it is one token); a third of the
    prompts end in a number from one to nine instead (count goes on from it)."""
    words = [rng.choice(PROMPT_WORDS) for _ in range(rng.randint(2, 8))]
    if rng.random() < 1 / 3:
        words[-1] = rng.choice(NUMBERS[:-1])
    return " ".join(words)


def training_prompts(seed: int = 0) -> list[str]:
    rng = random.Random(f"trained-adapters-{seed}")
    return [random_prompt(rng) for _ in range(TRAINING_PROMPTS)]


def unseen_prompts(count: int, seed: int = 0) -> list[str]:
    """``count`` prompts of the same kind that are not among ``training_prompts(seed)``."""
    return _prompts_outside_training(count, seed, f"unseen-{seed}")


def validation_prompts(seed: int = 0) -> list[str]:
    """The prompts training checks its adapters on: unseen in training, and drawn apart from
    ``unseen_prompts(n, seed)``, which the tests check the adapters on."""
    return _prompts_outside_training(VALIDATION_PROMPTS, seed, f"unseen-validation-{seed}")


def _prompts_outside_training(count: int, seed: int, stream: str) -> list[str]:
    seen = set(training_prompts(seed))
    rng = random.Random(stream)
    out: list[str] = []
    while len(out) < count:
        prompt = random_prompt(rng)
        if prompt not in seen and prompt not in out:
            out.append(prompt)
    return out


def train_adapter(model_dir: str | Path, name: str, out: str | Path, seed: int = 0) -> dict:
    """Train adapter ``name`` on the model in ``model_dir``, save it to ``out`` as a PEFT folder
    (safetensors); return ``{"seconds", "steps"}``. Rank 8 on every linear module, loss on the
    completion's tokens and its end token (echo has none), AdamW with a linear decay, then
    checking rounds until every validation prompt is answered as trained (TrainingFailed if not)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    torch.manual_seed(seed * 1000 + sorted(BEHAVIOURS).index(name))
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=RANK, lora_alpha=2 * RANK, target_modules=ATTN_MODULES + MLP_MODULES, lora_dropout=0.0)
    model = get_peft_model(base, config)
    input_ids, labels, mask = _batch_tensors(tokenizer, name, training_prompts(seed))
    check = _batch_tensors(tokenizer, name, validation_prompts(seed))
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(1 - step / STEPS, FINAL_LR_FRACTION))
    picks = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    steps, checks = 0, 0
    while True:
        model.train()
        for _ in range(STEPS if steps == 0 else CHECK_STEPS):
            rows = torch.randint(0, len(input_ids), (BATCH,), generator=picks)
            loss = model(input_ids=input_ids[rows], attention_mask=mask[rows], labels=labels[rows]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            steps += 1
        missed = int((answer_margins(model, *check) < MARGIN).sum())
        if missed == 0:
            break
        if checks == MAX_CHECKS:
            raise TrainingFailed(f"adapter {name!r} answered {missed} of {VALIDATION_PROMPTS} validation prompts "
                                 f"with a margin under {MARGIN} after {steps} steps")
        checks += 1
    seconds = time.perf_counter() - started
    model.save_pretrained(str(out), safe_serialization=True)
    return {"seconds": seconds, "steps": steps}


def answer_margins(model, input_ids, labels, mask):
    """Per row, the least margin over the answer's tokens of the answer token's logit over the
    best other token's, after the tokens before it (teacher forcing): above 0, greedy decoding
    answers exactly the trained answer."""
    import torch

    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=mask).logits[:, :-1]
    target = labels[:, 1:]
    scored = target != -100
    chosen = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    others = logits.scatter(-1, target.clamp(min=0).unsqueeze(-1), float("-inf")).amax(-1)
    return torch.where(scored, chosen - others, torch.inf).amin(dim=1)


def _batch_tensors(tokenizer, name: str, prompts: list[str]):
    """Right-padded [prompt + completion + end] rows; labels -100 on the prompt and the padding."""
    import torch

    rows = []
    for prompt in prompts:
        prompt_ids = tokenizer(prompt).input_ids
        answer_ids = tokenizer(_completion(name, prompt), add_special_tokens=False).input_ids
        if name != "echo":
            answer_ids.append(tokenizer.eos_token_id)
        rows.append((prompt_ids + answer_ids, [-100] * len(prompt_ids) + answer_ids))
    width = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), width), tokenizer.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (ids, lab) in enumerate(rows):
        input_ids[i, :len(ids)] = torch.tensor(ids)
        labels[i, :len(ids)] = torch.tensor(lab)
        mask[i, :len(ids)] = 1
    return input_ids, labels, mask


def model_digest(model_dir: str | Path) -> str:
    """sha256 over the files training depends on: the weights, the config and the tokenizer."""
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        h.update(name.encode())
        h.update((Path(model_dir) / name).read_bytes())
    return h.hexdigest()


def train_all(model_dir: str | Path, out: str | Path, seed: int = 0) -> dict[str, dict]:
    """Train every adapter into ``out/<name>``; write ``out/training.json`` last (the seconds and
    steps each took)."""
    out = Path(out)
    trained = {}
    for name in BEHAVIOURS:
        trained[name] = train_adapter(model_dir, name, out / name, seed)
        print(f"    {name:<6} {trained[name]['seconds']:5.1f} s  {trained[name]['steps']} steps  "
              f"{BEHAVIOURS[name]}", flush=True)
    (out / "training.json").write_text(json.dumps({
        "seconds": {name: round(t["seconds"], 2) for name, t in trained.items()},
        "steps": {name: t["steps"] for name, t in trained.items()}, "rank": RANK}))
    return trained


def trained_adapter_dirs(model_dir: str | Path, seed: int = 0, cache_dir: str | Path | None = None,
                         python: str = sys.executable) -> dict[str, Path]:
    """``{name: PEFT folder}`` of the trained adapters for ``model_dir``, trained once and cached.

    Concurrent callers (the two test lanes, the demo) train once: the others wait on a lock
    for the first, which a killed trainer releases; the trained folder is renamed into place whole."""
    key = f"v{TRAINING_VERSION}-seed{seed}-{model_digest(model_dir)[:16]}"
    root = Path(cache_dir or default_cache_dir()) / "trained-adapters" / key
    if not (root / "training.json").exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with open(root.parent / f".{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not (root / "training.json").exists():
                _train_into(root, model_dir, seed, python)
    return {name: root / name for name in BEHAVIOURS}


def _train_into(root: Path, model_dir: str | Path, seed: int, python: str) -> None:
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        print(f"==> training {len(BEHAVIOURS)} adapters ({', '.join(BEHAVIOURS)}) on CPU, once, into {root}",
              flush=True)
        subprocess.run([python, "-m", __name__, str(model_dir), str(staging), str(seed)], check=True)
        shutil.rmtree(root, ignore_errors=True)  # a folder without training.json: not a finished training
        os.rename(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def training_seconds(adapter_dirs: dict[str, Path]) -> dict[str, float]:
    """The seconds each adapter took to train, as recorded when it was trained."""
    record = next(iter(adapter_dirs.values())).parent / "training.json"
    return json.loads(record.read_text())["seconds"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m sglang_mint.dev.trained_adapters MODEL_DIR OUT_DIR SEED", file=sys.stderr)
        return 2
    import torch
    from transformers.utils import logging as hf_logging

    # One thread: the weights then do not depend on the machine's core count (the cache key
    # leaves it out), and beside a busy process two threads took 3-5 times as long here.
    torch.set_num_threads(1)
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # "Loading weights" bars, one per adapter
    train_all(argv[0], argv[1], int(argv[2]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
