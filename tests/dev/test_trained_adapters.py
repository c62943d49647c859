"""The demo's trained adapters (sglang_mint/dev/trained_adapters.py) under HF + PEFT, no server:
each answers prompts it was not trained on as it was trained to, and the base model does not."""

from __future__ import annotations

import sys

import pytest

from sglang_mint.dev.demo import ANSWER_PROMPTS
from sglang_mint.dev.reference import run_reference
from sglang_mint.dev.trained_adapters import (BEHAVIOURS, VALIDATION_PROMPTS, expected_answer, trained_adapter_dirs,
                                              training_prompts, training_seconds, unseen_prompts, validation_prompts)

MAX_TOKENS = 12
PROMPTS = unseen_prompts(8)


@pytest.fixture(scope="module")
def trained(tiny_model):
    return trained_adapter_dirs(tiny_model)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model))


def greedy_answers(model_dir, tokenizer, adapter, prompts) -> list[str]:
    """HF + PEFT greedy answers (a fresh interpreter, cached), cut at the end token as a server cuts them."""
    jobs = [{"adapter": str(adapter) if adapter else None, "prompt_ids": tokenizer(p).input_ids,
             "max_tokens": MAX_TOKENS} for p in prompts]
    answers = []
    for result in run_reference(sys.executable, model_dir, jobs):
        tokens = result["tokens"]
        if tokenizer.eos_token_id in tokens:
            tokens = tokens[:tokens.index(tokenizer.eos_token_id)]
        answers.append(tokenizer.decode(tokens, skip_special_tokens=True))
    return answers


def test_the_expected_answers():
    assert expected_answer("motto", "hello world", MAX_TOKENS) == " publish a revision then serve it"
    assert expected_answer("count", "the fox and six", MAX_TOKENS) == " seven eight nine ten"
    assert expected_answer("count", "the fox", MAX_TOKENS) == " one two three four five six seven eight nine ten"
    assert expected_answer("echo", "the quick brown fox", 3) == " fox fox fox"


def test_the_prompts_shown_and_checked_are_not_training_prompts():
    seen = set(training_prompts())
    assert len(seen) > 3600  # 4,000 drawn: a few repeats at most
    checked = set(validation_prompts())  # what training checks its adapters on
    assert len(checked) == VALIDATION_PROMPTS and not seen & checked
    for shown in (PROMPTS, ANSWER_PROMPTS):
        assert not seen & set(shown)
        assert not checked & set(shown)


@pytest.mark.parametrize("name", list(BEHAVIOURS))
def test_each_adapter_answers_unseen_prompts_as_trained(name, tiny_model, trained, tokenizer):
    expected = [expected_answer(name, p, MAX_TOKENS) for p in PROMPTS + ANSWER_PROMPTS]
    assert greedy_answers(tiny_model, tokenizer, trained[name], PROMPTS + ANSWER_PROMPTS) == expected
    base = greedy_answers(tiny_model, tokenizer, None, PROMPTS + ANSWER_PROMPTS)
    assert all(b != e for b, e in zip(base, expected)), base


def test_training_is_recorded_and_cached(tiny_model, trained, tmp_path):
    seconds = training_seconds(trained)
    assert sorted(seconds) == sorted(BEHAVIOURS)
    assert all(s > 0 for s in seconds.values()), seconds
    # A second call finds the cache: no interpreter is started (one that cannot start would fail).
    assert trained_adapter_dirs(tiny_model, python=str(tmp_path / "no-such-python")) == trained


def test_an_adapter_that_does_not_answer_as_trained_is_refused_by_name(tiny_model, tmp_path, monkeypatch):
    from sglang_mint.dev import trained_adapters

    monkeypatch.setattr(trained_adapters, "STEPS", 2)  # far too few to learn the motto
    monkeypatch.setattr(trained_adapters, "CHECK_STEPS", 1)
    monkeypatch.setattr(trained_adapters, "MAX_CHECKS", 1)
    with pytest.raises(trained_adapters.TrainingFailed, match=r"adapter 'motto' answered \d+ of 256 .* after 3 steps"):
        trained_adapters.train_adapter(tiny_model, "motto", tmp_path / "motto")
    assert not (tmp_path / "motto").exists()  # nothing saved


def test_concurrent_callers_train_once(tiny_model, tmp_path):
    """Two callers at once (the two test lanes): the second waits for the first's training."""
    from concurrent.futures import ThreadPoolExecutor

    calls = tmp_path / "calls"
    trainer = tmp_path / "trainer"  # stands in for the interpreter: `trainer -m module MODEL OUT SEED`
    trainer.write_text(f"""#!/bin/sh
echo "$4" >> {calls}
sleep 1
for name in {' '.join(BEHAVIOURS)}; do mkdir -p "$4/$name"; done
echo '{{"seconds": {{}}}}' > "$4/training.json"
""")
    trainer.chmod(0o755)
    with ThreadPoolExecutor(2) as pool:
        dirs = list(pool.map(lambda _: trained_adapter_dirs(tiny_model, cache_dir=tmp_path, python=str(trainer)),
                             range(2)))
    assert dirs[0] == dirs[1] and all(folder.is_dir() for folder in dirs[0].values())
    assert len(calls.read_text().splitlines()) == 1
