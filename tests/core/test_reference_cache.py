"""HF+PEFT references are computed once per model, adapter, prompt and library versions (dev/reference.py)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from sglang_mint.dev.reference import adapter_digest, run_reference


def test_a_reference_is_read_back_and_only_new_jobs_run(tiny_model, tiny_adapters, tmp_path, monkeypatch):
    monkeypatch.setenv("MINT_CACHE_DIR", str(tmp_path / "cache"))
    adapter = next(iter(tiny_adapters.values()))
    job = {"adapter": str(adapter), "prompt_ids": [5, 6, 7], "max_tokens": 3}
    base = {"adapter": None, "prompt_ids": [5, 6, 7], "max_tokens": 3}
    first = run_reference(sys.executable, tiny_model, [job, base])
    assert first[0]["tokens"] and first[0]["logprobs"] != first[1]["logprobs"]  # the adapter matters
    # The same adapter written elsewhere (its config names another base path) is the same job.
    moved = tmp_path / "moved"
    shutil.copytree(adapter, moved)
    config = json.loads((moved / "adapter_config.json").read_text())
    (moved / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/elsewhere"}))
    no_python = str(tmp_path / "no-python")  # any job that is not cached would have to run here, and fail
    assert run_reference(no_python, tiny_model, [{**job, "adapter": str(moved)}, base]) == first
    with pytest.raises((RuntimeError, OSError)):
        run_reference(no_python, tiny_model, [{**job, "prompt_ids": [5, 6, 8]}])  # another prompt runs
    with pytest.raises((RuntimeError, OSError)):
        run_reference(no_python, tiny_model, [{**job, "max_tokens": 4}])
    other = list(tiny_adapters.values())[1]  # other weights
    with pytest.raises((RuntimeError, OSError)):
        run_reference(no_python, tiny_model, [{**job, "adapter": str(other)}])


def write_adapter(folder, **config) -> str:
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"the same weights")
    (folder / "adapter_config.json").write_text(json.dumps({"r": 8, **config}))
    return str(folder)


def test_an_adapter_s_targets_in_another_order_are_the_same_key(tmp_path):
    # PEFT keeps target_modules as a set: each process wrote them in its own order, and every run missed the cache
    first = adapter_digest(write_adapter(tmp_path / "a", target_modules=["q_proj", "v_proj", "o_proj"],
                                         base_model_name_or_path="/tmp/one"))
    again = adapter_digest(write_adapter(tmp_path / "b", target_modules=["o_proj", "q_proj", "v_proj"],
                                         base_model_name_or_path="/tmp/two"))
    other = adapter_digest(write_adapter(tmp_path / "c", target_modules=["q_proj", "v_proj"]))
    regex = adapter_digest(write_adapter(tmp_path / "d", target_modules=".*proj"))
    assert first == again and len({first, other, regex}) == 3


def test_an_adapter_s_patterns_in_another_order_are_another_key(tmp_path):
    # PEFT matches alpha_pattern and rank_pattern first-come: with both patterns matching q_proj, the first one's
    # alpha is q_proj's, so another order computes another adapter
    first = adapter_digest(write_adapter(tmp_path / "a", alpha_pattern={"q_proj": 4, "proj": 32}))
    swapped = adapter_digest(write_adapter(tmp_path / "b", alpha_pattern={"proj": 32, "q_proj": 4}))
    ranks = adapter_digest(write_adapter(tmp_path / "c", rank_pattern={"proj": 2, "q_proj": 4}))
    ranks_swapped = adapter_digest(write_adapter(tmp_path / "d", rank_pattern={"q_proj": 4, "proj": 2}))
    again = adapter_digest(write_adapter(tmp_path / "e", alpha_pattern={"q_proj": 4, "proj": 32}))
    assert first != swapped and ranks != ranks_swapped and first == again
