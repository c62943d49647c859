"""lora_alpha and alpha_pattern values are positive finite numbers, or a clean InvalidAdapter naming the field.

Python's json reads NaN and Infinity; ``NaN <= 0`` is False, so a NaN alpha passed the check and
reached the catalog's NOT NULL column (a 500) and, as an alpha_pattern value, uniform_lora's B
(every weight NaN). An integer too large for a float (10**400) raised OverflowError.
"""

from __future__ import annotations

import pytest
from adapter_fixtures import TINY, lora_config, lora_tensors
from safetensors.torch import save

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import check_lora, check_peft_bytes

HUGE = "1" + "0" * 400  # an int json reads exactly; float() of it overflows
BAD_NUMBERS = ["NaN", "Infinity", "-Infinity", "1e400", HUGE, "-3", "0"]
IDS = ["NaN", "Infinity", "-Infinity", "1e400", "10**400", "-3", "0"]


def _config_with(field_json: str) -> bytes:
    return ('{"peft_type": "LORA", "r": 8, "target_modules": ["q_proj", "v_proj"], ' + field_json + "}").encode()


@pytest.mark.parametrize("number", BAD_NUMBERS, ids=IDS)
def test_lora_alpha_must_be_a_positive_finite_number(number):
    with pytest.raises(InvalidAdapter, match="lora_alpha must be a positive finite number"):
        check_peft_bytes(_config_with(f'"lora_alpha": {number}'), save(lora_tensors()), TINY, "up")


@pytest.mark.parametrize("number", BAD_NUMBERS, ids=IDS)
def test_alpha_pattern_values_must_be_positive_finite_numbers(number):
    cfg = _config_with(f'"lora_alpha": 16, "alpha_pattern": {{"q_proj": {number}}}')
    with pytest.raises(InvalidAdapter, match=r"alpha_pattern\['q_proj'\] must be a positive finite number"):
        check_peft_bytes(cfg, save(lora_tensors()), TINY, "up")


@pytest.mark.parametrize("number", [float("nan"), float("inf"), 10 ** 400], ids=["nan", "inf", "10**400"])
def test_the_load_check_refuses_them_too(number):
    """check_lora runs on the config SGLang read from disk (a catalog written before this check)."""
    for cfg in (lora_config(lora_alpha=number), lora_config(alpha_pattern={"v_proj": number})):
        with pytest.raises(InvalidAdapter, match="must be a positive finite number"):
            check_lora(cfg, lora_tensors(), TINY, "load")


def test_large_finite_alphas_still_import():
    got = check_peft_bytes(_config_with('"lora_alpha": 1e300, "alpha_pattern": {"q_proj": 0.5}'),
                           save(lora_tensors()), TINY, "up")
    assert got.alpha == 1e300


def test_uniform_lora_refuses_a_nan_scaling_even_unchecked():
    """uniform_lora folds each module's scaling into B: a NaN alpha_pattern value made every weight of B NaN."""
    from sglang_mint.adapters.uniform_rank import uniform_lora

    with pytest.raises(InvalidAdapter, match="q_proj has scaling nan"):
        uniform_lora(lora_config(alpha_pattern={"q_proj": float("nan")}), lora_tensors())
