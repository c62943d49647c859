"""HF+PEFT references are computed once per model, adapter, prompt and library versions (dev/reference.py)."""

from __future__ import annotations

import json
import shutil
import sys

import pytest

from sglang_mint.dev.reference import run_reference


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
