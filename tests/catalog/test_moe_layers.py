"""An MoE model's layer has either a dense MLP or experts: a LoRA on the MLP its layer lacks is refused.

SGLang builds each layer of an MoE model with routed experts (``mlp.experts``, with DeepSeek's
``mlp.shared_experts``) or with a dense MLP (``mlp.gate_proj/up_proj/down_proj``; DeepSeek's first
``first_k_dense_replace`` layers). HF+PEFT cannot produce a LoRA on the one a layer lacks, and SGLang
files it somewhere else: ``layers.1.mlp.gate_proj`` on an expert layer as that layer's gate_up_proj (a
no-op on Qwen3-MoE, a change of output on DeepSeek-V3), an expert's on a dense layer dropped or in the
dense MLP. The base-model record says which layers route to experts (``moe_layers``); publish refuses
such a tensor naming it, its layer and what the layer has. A record without ``moe_layers`` (an older
catalog) accepts as before: test_base_record.py covers it and refresh-base.

Tiny MoE bases (sglang_mint/dev/tiny_moe.py): hidden 64, dense MLP 128, 8 experts and a shared expert of 32.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from catalog_fixtures import written

from sglang_mint.adapters.base_model import BaseModel, base_model_from_config
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.capacity.hardware import MODELS
from sglang_mint.dev.tiny_moe import DEEPSEEK_EXTRA, TINY_DEEPSEEK_V3, TINY_QWEN3_MOE

R, H, DENSE, EXPERT, E = 4, 64, 128, 32, 8
QWEN = {"architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", **TINY_QWEN3_MOE, "vocab_size": 1000}
# Layer 0 dense, layer 1 routes to experts
DEEPSEEK = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", **TINY_DEEPSEEK_V3,
            **DEEPSEEK_EXTRA, "vocab_size": 1000, "first_k_dense_replace": 1}
# Every layer routes to experts, each with a shared expert (SGLang's qwen3_next.py)
NEXT = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", **TINY_QWEN3_MOE, "vocab_size": 1000,
        "shared_expert_intermediate_size": EXPERT}
CONFIGS = {"qwen3-moe": QWEN, "deepseek-v3": DEEPSEEK, "qwen3-next": NEXT}
DENSE_MLP = {"gate_proj": (H, DENSE), "up_proj": (H, DENSE), "down_proj": (DENSE, H), "gate_up_proj": (H, 2 * DENSE)}
PRE = "base_model.model.model."


def lora(path: str, fin: int, fout: int, lead: tuple = ()) -> dict:
    """lora_A [*lead, R, fin] and lora_B [*lead, fout, R] of the module at ``PRE + path``."""
    rng = np.random.default_rng(len(path))
    return {f"{PRE}{path}.lora_A.weight": rng.standard_normal((*lead, R, fin)).astype(np.float16),
            f"{PRE}{path}.lora_B.weight": rng.standard_normal((*lead, fout, R)).astype(np.float16)}


def adapter(folder, tensors: dict, targets: list[str], **config) -> str:
    os.makedirs(folder)
    cfg = {"peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": targets, **config}
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    from safetensors.numpy import save_file
    save_file(tensors, os.path.join(folder, "adapter_model.safetensors"))
    return str(folder)


@pytest.fixture
def moe_catalog(catalog_target, tmp_path):
    """moe_catalog(family) -> a new catalog (this test's backend) for the tiny MoE base of ``family``."""
    from sglang_mint.catalog import init_catalog
    opened = []

    def make(family):
        model = tmp_path / f"tiny-{family}"
        model.mkdir()
        (model / "config.json").write_text(json.dumps(CONFIGS[family]))
        target, blobs = catalog_target
        opened.append(init_catalog(target, str(model), blobs=blobs))
        return opened[-1]
    yield make
    for cat in opened:
        cat.close()


@pytest.mark.parametrize("family", sorted(CONFIGS))
def test_a_dense_mlp_lora_on_a_layer_that_routes_to_experts_is_refused(family, moe_catalog, tmp_path):
    cat = moe_catalog(family)
    has = "(its MLP is routed experts mlp.experts[.<e>].<m>" + (
        " and shared experts mlp.shared_expert(s).<m>)" if family != "qwen3-moe" else ")")
    for module, (fin, fout) in DENSE_MLP.items():
        folder = adapter(tmp_path / module, lora(f"layers.1.mlp.{module}", fin, fout), [module])
        with pytest.raises(InvalidAdapter) as info:
            cat.publish(f"acme/{module}", folder)
        key = f"{PRE}layers.1.mlp.{module}.lora_A.weight"
        words = (f"{key}: layer 1 of base model 'tiny-{family}' routes to experts and has no dense mlp.{module}",
                 has, "refused")
        assert all(w in str(info.value) for w in words), str(info.value)
    assert written(cat) == (0, 0, [])


def _expert_forms() -> dict[str, tuple[dict, list[str], dict]]:
    """{form: (tensors on dense layer 0, target_modules, more config)} of every expert form check_tensors reads."""
    return {
        "per-expert": (lora("layers.0.mlp.experts.3.gate_proj", H, EXPERT), ["gate_proj"], {}),
        "3d": (lora("layers.0.mlp.experts.down_proj", EXPERT, H, lead=(E,)), ["down_proj"], {}),
        "shared": (lora("layers.0.mlp.shared_experts.up_proj", H, EXPERT), ["up_proj"], {}),
        "mixtral": (lora("layers.0.block_sparse_moe.experts.2.w1", H, EXPERT), ["w1"], {}),
        # PEFT 0.21's fused experts (target_parameters): down_proj's A [E*r, width], B [hidden, r*E]
        "peft-fused": ({f"{PRE}layers.0.mlp.experts.lora_A.weight": np.ones((E * R, EXPERT), np.float16),
                        f"{PRE}layers.0.mlp.experts.lora_B.weight": np.ones((H, R * E), np.float16)},
                       [], {"target_parameters": ["down_proj"]}),
    }


@pytest.mark.parametrize("form", sorted(_expert_forms()))
def test_an_expert_lora_on_a_dense_layer_is_refused(form, moe_catalog, tmp_path):
    cat = moe_catalog("deepseek-v3")
    tensors, targets, config = _expert_forms()[form]
    with pytest.raises(InvalidAdapter) as info:
        cat.publish("acme/experts", adapter(tmp_path / form, tensors, targets, **config))
    key = next(k for k in sorted(tensors) if "lora_A" in k)
    words = (f"{key}: layer 0 of base model 'tiny-deepseek-v3' has a dense MLP",
             "mlp.gate_proj, mlp.up_proj, mlp.down_proj", "refused")
    assert all(w in str(info.value) for w in words), str(info.value)
    assert written(cat) == (0, 0, [])


def test_each_layer_of_an_moe_model_takes_the_lora_of_its_own_mlp(moe_catalog, tmp_path):
    """DeepSeek's dense layer 0 takes a dense MLP LoRA, its expert layer 1 expert and shared-expert LoRA."""
    cat = moe_catalog("deepseek-v3")
    tensors = {}
    for module, (fin, fout) in DENSE_MLP.items():
        if module != "gate_up_proj":
            tensors.update(lora(f"layers.0.mlp.{module}", fin, fout))
    tensors.update(lora("layers.1.mlp.experts.5.gate_proj", H, EXPERT))
    tensors.update(lora("layers.1.mlp.experts.down_proj", EXPERT, H, lead=(E,)))
    tensors.update(lora("layers.1.mlp.shared_experts.up_proj", H, EXPERT))
    rev = cat.publish("acme/both", adapter(tmp_path / "both", tensors, ["gate_proj", "up_proj", "down_proj"]))
    assert rev.revision == 1 and set(rev.target_modules) == {"gate_proj", "up_proj", "down_proj"}


def test_the_record_says_which_layers_route_to_experts_as_sglang_builds_them():
    """SGLang 0.5.23: DeepSeek's layer l routes to experts when l >= first_k_dense_replace and l % moe_layer_freq
    == 0 (deepseek_v2.py _is_layer_sparse); every layer of Qwen2/3-MoE and Mixtral does (mlp_only_layers and
    decoder_sparse_step are not read). Unknown (None, nothing refused): DeepSeek without first_k_dense_replace
    (its default depends on the transformers config class) and MoE architectures whose rule mint lacks."""
    def layers(config, **changes):
        return base_model_from_config({**config, **changes}, "m").moe_layers

    assert layers(QWEN) == (0, 1)
    assert layers(QWEN, mlp_only_layers=[0], decoder_sparse_step=2) == (0, 1)
    assert layers(DEEPSEEK) == (1,) and layers(DEEPSEEK, first_k_dense_replace=0) == (0, 1)
    assert layers(DEEPSEEK, num_hidden_layers=7, moe_layer_freq=2) == (2, 4, 6)
    assert layers({k: v for k, v in DEEPSEEK.items() if k != "moe_layer_freq"}, num_hidden_layers=3) == (1, 2)
    assert layers({k: v for k, v in DEEPSEEK.items() if k != "first_k_dense_replace"}) is None
    mixtral = {"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 3,
               "intermediate_size": 96, "num_local_experts": 8}
    assert layers(mixtral) == (0, 1, 2)
    # GLM-4-MoE (glm4_moe.py _is_layer_sparse): l >= first_k_dense_replace; moe_layer_freq is not read
    assert layers(mixtral, model_type="glm4_moe", first_k_dense_replace=1, moe_layer_freq=2) == (1, 2)
    assert layers(mixtral, model_type="glm4_moe") is None
    assert layers(mixtral, model_type="jamba", first_k_dense_replace=1) is None  # no rule: unknown
    llama = {k: v for k, v in MODELS["llama-3-8b"].items() if k not in ("name", "dtype")}
    assert layers(llama) == ()
    row = {k: v for k, v in MODELS["deepseek-v3"].items() if k not in ("name", "dtype")}
    assert layers(row) == tuple(range(3, 61))


# Qwen/Qwen3-Next-80B-A3B-Instruct's config.json (the keys Qwen3NextConfig reads)
QWEN3_NEXT_80B = {
    "architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "attention_bias": False,
    "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645, "decoder_sparse_step": 1,
    "full_attention_interval": 4, "head_dim": 256, "hidden_act": "silu", "hidden_size": 2048,
    "initializer_range": 0.02, "intermediate_size": 5120, "linear_conv_kernel_dim": 4, "linear_key_head_dim": 128,
    "linear_num_key_heads": 16, "linear_num_value_heads": 32, "linear_value_head_dim": 128,
    "max_position_embeddings": 262144, "mlp_only_layers": [], "moe_intermediate_size": 512, "norm_topk_prob": True,
    "num_attention_heads": 16, "num_experts": 512, "num_experts_per_tok": 10, "num_hidden_layers": 48,
    "num_key_value_heads": 2, "output_router_logits": False, "partial_rotary_factor": 0.25, "rms_norm_eps": 1e-06,
    "rope_scaling": None, "rope_theta": 10000000, "router_aux_loss_coef": 0.001,
    "shared_expert_intermediate_size": 512, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "use_cache": True, "use_sliding_window": False, "vocab_size": 151936,
}
# meta-llama/Llama-4-Scout-17B-16E-Instruct's config.json: the text model under text_config (Llama4TextConfig)
LLAMA4_SCOUT = {
    "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "boi_token_index": 200080,
    "eoi_token_index": 200081, "image_token_index": 200092, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
    "text_config": {
        "model_type": "llama4_text", "attention_bias": False, "attention_chunk_size": 8192, "attention_dropout": 0.0,
        "bos_token_id": 200000, "eos_token_id": [200001, 200007, 200008], "for_llm_compressor": False,
        "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "initializer_range": 0.02,
        "interleave_moe_layer_step": 1, "intermediate_size": 8192, "intermediate_size_mlp": 16384,
        "max_position_embeddings": 10485760, "no_rope_layers": [], "num_attention_heads": 40,
        "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 16,
        "output_router_logits": False, "pad_token_id": 200018, "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 16.0, "high_freq_factor": 1.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0, "router_aux_loss_coef": 0.001, "router_jitter_noise": 0.0, "use_cache": True,
        "use_qk_norm": True, "vocab_size": 202048},
    "vision_config": {"model_type": "llama4_vision_model", "hidden_size": 1408, "intermediate_size": 5632,
                      "num_attention_heads": 16, "num_hidden_layers": 34, "image_size": 336, "patch_size": 14,
                      "vision_output_dim": 4096, "projector_input_dim": 4096, "projector_output_dim": 4096},
}


def _llama4(**text_changes) -> dict:
    """LLAMA4_SCOUT with ``text_changes`` made to its text_config (a key changed to None is dropped)."""
    text = {k: v for k, v in {**LLAMA4_SCOUT["text_config"], **text_changes}.items() if v is not None}
    return {**LLAMA4_SCOUT, "text_config": text}


def test_qwen3_next_and_llama_4_route_the_layers_sglang_builds_with_experts():
    """SGLang 0.5.23 qwen3_next.py: every layer is sparse (is_layer_sparse = True; mlp_only_layers and
    decoder_sparse_step are not read). llama4.py _is_moe_layer: (l + 1) % interleave_moe_layer_step == 0, every
    layer when the step is 0; Llama4TextConfig's default step is 1, and its moe_layers key is not read."""
    def layers(config):
        return base_model_from_config(config, "m").moe_layers

    assert layers(QWEN3_NEXT_80B) == tuple(range(48))
    assert layers({**QWEN3_NEXT_80B, "mlp_only_layers": [0], "decoder_sparse_step": 2}) == tuple(range(48))
    assert layers(LLAMA4_SCOUT) == tuple(range(48))
    # Llama-4-Maverick-17B-128E: 128 experts on every other layer, 1, 3, ..., 47
    maverick = _llama4(interleave_moe_layer_step=2, num_local_experts=128, moe_layers=list(range(1, 48, 2)))
    assert layers(maverick) == tuple(range(1, 48, 2))
    text_only = {"architectures": ["Llama4ForCausalLM"], **maverick["text_config"]}  # a text-only export
    assert layers(text_only) == tuple(range(1, 48, 2))
    assert layers(_llama4(interleave_moe_layer_step=3, num_hidden_layers=7)) == (2, 5)
    assert layers(_llama4(interleave_moe_layer_step=0)) == tuple(range(48))
    assert layers(_llama4(interleave_moe_layer_step=None)) == tuple(range(48))  # the config class's default: 1
    assert layers(_llama4(num_local_experts=0)) == ()
    assert layers(_llama4(interleave_moe_layer_step=-2)) is None  # no step SGLang could build with: unknown
    assert layers(_llama4(interleave_moe_layer_step="2")) is None


def test_the_identity_is_unchanged_and_the_record_round_trips():
    """moe_layers is no shape key: a catalog made before it keeps its identity (these are the old values)."""
    row = {k: v for k, v in MODELS["deepseek-v3"].items() if k not in ("name", "dtype")}
    ids = [base_model_from_config(c, "m").identity for c in (QWEN, DEEPSEEK, row)]
    assert ids == ["qwen3_moe-5237bc8a6878169f", "deepseek_v3-74f6e75244792b31", "deepseek_v3-6d741df0751452e9"]
    base = base_model_from_config(DEEPSEEK, "m")
    stored = json.loads(json.dumps(base.to_json()))
    assert stored["moe_layers"] == [1] and BaseModel.from_json(stored) == base
    assert BaseModel.from_json(stored).routes_to_experts(1) and not base.routes_to_experts(0)
    older = BaseModel.from_json({k: v for k, v in stored.items() if k != "moe_layers"})
    assert older.unrecorded == ("moe_layers",) and older.routes_to_experts(1) is None


def test_a_server_whose_model_puts_experts_on_other_layers_refuses_the_catalog(tmp_path):
    """first_k_dense_replace and moe_layer_freq are not in the identity (changing SHAPE_KEYS would change every
    catalog's): a served DeepSeek whose dense layers differ from the record's would run every adapter checked
    against the other layout. The server refuses the catalog at start, as for another model."""
    from sglang_mint.catalog import init_catalog
    from sglang_mint.config import MintConfig, check_catalog_serves
    from sglang_mint.errors import MintError

    deepseek = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 64,
                "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 2, "q_lora_rank": 48,
                "kv_lora_rank": 256, "qk_rope_head_dim": 32, "qk_nope_head_dim": 16, "v_head_dim": 16,
                "n_routed_experts": 4, "moe_intermediate_size": 32, "n_shared_experts": 1, "vocab_size": 1000,
                "first_k_dense_replace": 1, "moe_layer_freq": 1}
    for name, changes in (("recorded", {}), ("served", {"first_k_dense_replace": 2})):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({**deepseek, **changes}))
    init_catalog(str(tmp_path / "cat"), str(tmp_path / "recorded")).close()
    config = MintConfig.from_flags(catalog=str(tmp_path / "cat"))
    check_catalog_serves(config, str(tmp_path / "recorded"))  # the same model: served
    with pytest.raises(MintError, match=r"routes to experts on layers \[1, 2, 3\], .* does on \[2, 3\]"):
        check_catalog_serves(config, str(tmp_path / "served"))
