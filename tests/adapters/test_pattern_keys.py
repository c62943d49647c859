"""rank_pattern / alpha_pattern keys and target_modules come from the tenant: none is run as a regex.

A key such as ``(a|aa)*b`` matched by ``re`` against a long module path backtracks for seconds
per character while holding the GIL (3.5 s at 36 characters, 1.6x per character more): every
thread of the process stops. Keys are module names or dotted paths, matched as PEFT matches them
(``re.match(rf"(.*\\.)?({key})$", path)``: the key is the path or a dot-separated suffix of it).
"""

from __future__ import annotations

import re
import time

import pytest
from adapter_fixtures import TINY, config_bytes, lora_config, lora_tensors
from peft.utils.other import get_pattern_key
from safetensors.torch import save

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.lora_keys import pattern_value, rank_alpha
from sglang_mint.adapters.peft import check_lora, check_peft_bytes

L = "base_model.model.model.layers."
PATHS = [L + "0.self_attn.q_proj", L + "1.self_attn.q_proj", L + "11.self_attn.q_proj", L + "0.self_attn.v_proj",
         L + "0.mlp.experts.gate_up_proj", L + "0.mlp.experts.3.down_proj", L + "0.mlp.down_proj",
         "q_proj", "gate_up_proj", "layers.1.self_attn.q_proj"]
KEYS = ["q_proj", "v_proj", "proj", "self_attn.q_proj", "layers.1.self_attn.q_proj", "1.self_attn.q_proj",
        ".*\\.gate_up_proj",  # what PEFT 0.21 writes for fused experts: rf".*\.{re.escape(name)}"
        "layers\\.0\\.mlp\\.down_proj", "down_proj", "experts.3.down_proj", "q_proj|v_proj", "k_proj|.*\\.down_proj",
        L + "0.self_attn.q_proj", "q_proj.lora_A"]
REFUSED = ["(a|aa)*b", "q_proj(", ".*", "v_proj$", "[qv]_proj", "q_proj.*", "", "a||b", "layers.\\d+.q_proj",
           "(q_proj)", "é_proj"]


@pytest.mark.parametrize("key", KEYS)
def test_keys_match_exactly_what_peft_matches(key):
    for path in PATHS:
        peft_matched = get_pattern_key([key], path) == key
        assert pattern_value({key: 7}, path, 0) == (7 if peft_matched else 0), (key, path, peft_matched)


def test_the_first_matching_key_wins_as_in_peft():
    patterns = {"experts.3.down_proj": 2, "down_proj": 3, ".*\\.down_proj": 4}
    for path in PATHS:
        want = {"experts.3.down_proj": 2, "down_proj": 3, ".*\\.down_proj": 4}.get(get_pattern_key(patterns, path), 9)
        assert pattern_value(patterns, path, 9) == want, path


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
@pytest.mark.parametrize("key", REFUSED)
def test_other_regexes_are_refused_at_publish_and_load(field, key):
    cfg = {field: {"v_proj": 8, key: 8}}
    want = f"{field} key {key!r}"
    with pytest.raises(InvalidAdapter, match=re.escape(want)):
        check_peft_bytes(config_bytes(**cfg), save(lora_tensors()), TINY, "up")
    with pytest.raises(InvalidAdapter, match=re.escape(want)):
        check_lora(lora_config(**cfg), lora_tensors(), TINY, "load")


def test_a_backtracking_key_costs_nothing(monkeypatch):
    """On ``re`` this took about 0.5 s at 32 characters, 1.6x more per character: at 48 about ten minutes
    (against 30 s below, far beyond a starved machine's delays). Refused now before any matching."""
    compile_regex = re._compile  # what re.match, re.compile and the rest compile a pattern with

    def no_regex_of_the_key(pattern, flags):
        assert "(a|aa)*b" not in str(pattern), f"the key was run as a regex: {pattern!r}"
        return compile_regex(pattern, flags)

    monkeypatch.setattr(re, "_compile", no_regex_of_the_key)
    path = L + "0." + "a" * 48 + ".o_proj"
    start = time.perf_counter()
    with pytest.raises(InvalidAdapter, match=r"rank_pattern key '\(a\|aa\)\*b'"):
        rank_alpha({"r": 4, "lora_alpha": 8, "rank_pattern": {"(a|aa)*b": 8}}, path)
    assert time.perf_counter() - start < 30


@pytest.mark.parametrize("targets", [".*\\.(q_proj|v_proj)", "q_proj", "all-linear", "(a|aa)*b"])
def test_a_string_target_modules_is_refused(targets):
    """SGLang reads a string target_modules only as 'all'/'all-linear' (get_normalized_target_modules) and the
    adapter's tensors then go unchecked against a target list: a list of module names is required."""
    with pytest.raises(InvalidAdapter, match="target_modules must be a non-empty list of module names"):
        check_peft_bytes(config_bytes(target_modules=targets), save(lora_tensors()), TINY, "up")
