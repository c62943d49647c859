"""Every accepted LoRA tensor is a module of the base model whose widths were checked.

SGLang finds a LoRA weight's layer by the first ``layers.<n>.`` of its name and its module by
substring, so ``layers.0.foo.o_proj`` lands in layer 0's o_proj buffer: a width the base does not
have ([8, 999]) then fails an assert inside the scheduler's forward and takes every tenant down.
"""

from __future__ import annotations

import pytest
import torch
from adapter_fixtures import TINY, TINY_CONFIG, config_bytes, lora_config, lora_tensors
from safetensors.torch import save

from sglang_mint.adapters.base_model import BaseModel, base_model_from_config
from sglang_mint.adapters.errors import BaseModelMismatch, InvalidAdapter
from sglang_mint.adapters.peft import check_lora, check_peft_bytes

QVO = ["q_proj", "v_proj", "o_proj"]
LAYER0 = "base_model.model.model.layers.0."


def _pair(module: str, a: tuple[int, int], b: tuple[int, int]) -> dict[str, torch.Tensor]:
    return {f"{module}.lora_A.weight": torch.randn(*a).to(torch.bfloat16),
            f"{module}.lora_B.weight": torch.randn(*b).to(torch.bfloat16)}


def _refused_at_publish_and_load(tensors: dict, cfg: dict, words: list[str], base=TINY) -> str:
    """The publish check (safetensors bytes) and the scheduler's load check (tensors in memory) both refuse."""
    with pytest.raises(InvalidAdapter) as publish:
        check_peft_bytes(config_bytes(**cfg), save(tensors), base, "up")
    with pytest.raises(InvalidAdapter) as load:
        check_lora(lora_config(**cfg), tensors, base, "load")
    for message in (str(publish.value), str(load.value)):
        for w in words:
            assert w in message, message
    return str(publish.value)


@pytest.mark.parametrize("widths", [(999, 999), (128, 128)], ids=["wrong-widths", "o_proj-widths"])
def test_a_known_leaf_under_an_unknown_parent_is_refused(widths):
    """The reviewer's module: o_proj under ``foo`` has no width to check against, whatever its shape."""
    fin, fout = widths
    module = LAYER0 + "foo.o_proj"
    tensors = {**lora_tensors(), **_pair(module, (8, fin), (fout, 8))}
    _refused_at_publish_and_load(tensors, {"target_modules": QVO}, [module + ".lora_A.weight", "not a module"])


@pytest.mark.parametrize("module", [
    "base_model.model.model.o_proj",  # no layer: SGLang's get_layer_id finds none
    LAYER0 + "self_attn.foo.o_proj",  # a known parent, one level too deep
    LAYER0 + "self_attn.layers.1.mlp.o_proj",  # a second layers.<n>. inside the first
    LAYER0 + "mlp.o_proj",  # o_proj is no module of the MLP
    LAYER0 + "mlp.experts.0.down_proj",  # a dense base has no experts
])
def test_paths_the_base_model_does_not_have_are_refused(module):
    tensors = {**lora_tensors(), **_pair(module, (8, 128), (128, 8))}
    targets = ["q_proj", "v_proj", module.rsplit(".", 1)[-1]]
    _refused_at_publish_and_load(tensors, {"target_modules": targets}, [module + ".lora_A.weight"])


def test_the_same_wrong_width_under_self_attn_is_a_mismatch():
    tensors = {**lora_tensors(), **_pair(LAYER0 + "self_attn.o_proj", (8, 999), (999, 8))}
    _refused_at_publish_and_load(tensors, {"target_modules": QVO}, ["[8, 999]", "expected [8, 128]"])
    with pytest.raises(BaseModelMismatch):
        check_lora(lora_config(target_modules=QVO), tensors, TINY, "load")


def test_lm_head_is_checked_against_hidden_and_vocab():
    """lm_head (outside the layers) maps hidden 128 -> vocab 1000: accepted at that width, refused at another."""
    good = {**lora_tensors(), **_pair("base_model.model.lm_head", (8, 128), (1000, 8))}
    got = check_peft_bytes(config_bytes(target_modules=["q_proj", "v_proj", "lm_head"]), save(good), TINY, "up")
    assert "lm_head" in got.target_modules
    bad = {**lora_tensors(), **_pair("base_model.model.lm_head", (8, 128), (999, 8))}
    _refused_at_publish_and_load(bad, {"target_modules": ["q_proj", "v_proj", "lm_head"]},
                                 ["lm_head.lora_B.weight", "[999, 8]", "expected [1000, 8]"])


def test_a_stacked_qkv_proj_is_checked_against_q_plus_k_plus_v():
    """Phi-3 style ``self_attn.qkv_proj``: in 128, out 128 + 64 + 64 = 256."""
    good = {k: v for layer in range(2) for k, v in
            _pair(f"base_model.model.model.layers.{layer}.self_attn.qkv_proj", (8, 128), (256, 8)).items()}
    assert check_peft_bytes(config_bytes(target_modules=["qkv_proj"]), save(good), TINY, "up").rank == 8
    bad = {**good, **_pair(LAYER0 + "self_attn.qkv_proj", (8, 128), (255, 8))}
    _refused_at_publish_and_load(bad, {"target_modules": ["qkv_proj"]}, ["[255, 8]", "expected [256, 8]"])


def test_widths_a_catalog_never_recorded_are_refused_not_skipped():
    """A catalog made before MoE widths were recorded cannot check an expert's widths: it refuses them."""
    moe = {**TINY_CONFIG, "num_experts": 4, "moe_intermediate_size": 32}
    old = dict(base_model_from_config(moe, "old-moe").to_json(), moe_intermediate_size=None)
    old_base = BaseModel.from_json(old)
    module = LAYER0 + "mlp.experts.1.gate_proj"
    tensors = {**lora_tensors(), **_pair(module, (8, 128), (999, 8))}
    _refused_at_publish_and_load(tensors, {"target_modules": ["q_proj", "v_proj", "gate_proj"]},
                                 [module + ".lora_A.weight", "widths", "not recorded"], base=old_base)
