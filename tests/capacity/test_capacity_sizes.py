"""Weights and adapter sizes from a model's config, against hand counts and measured host bytes."""

import json

import pytest

from sglang_mint.adapters.base_model import base_model_from_config
from sglang_mint.capacity.hardware import MODELS, gpu, model_spec
from sglang_mint.capacity.sizes import adapter_size, layer_linears, resolve_targets, weight_bytes
from sglang_mint.dev.tiny import TINY_LLAMA
from sglang_mint.errors import MintError


def size(name, rank, targets=("all",), adapter_bytes=2):
    spec = model_spec(name)
    return adapter_size(spec.base, rank, resolve_targets(spec.base, list(targets)), adapter_bytes, 2)


def test_llama_3_8b_rank_16_on_all_seven_modules_is_80_mib():
    # (4096+4096) + 2 x (4096+1024) + (4096+4096) + 3 x (4096+14336) = 81,920 per layer and unit of rank
    assert size("llama-3-8b", 16).file_bytes == 16 * 32 * 81_920 * 2 == 80 << 20


@pytest.mark.parametrize("name, published", [("llama-3-8b", 8.03e9), ("llama-3-70b", 70.6e9),
                                             ("qwen3-30b-a3b", 30.5e9), ("deepseek-v3", 671e9)])
def test_parameter_counts_match_the_published_ones(name, published):
    spec = model_spec(name)
    assert weight_bytes(spec.config, spec.base, 1) == pytest.approx(published, rel=0.005)


@pytest.mark.parametrize("rank, measured", [(1, 49_152), (4, 73_728), (64, 565_248)])
def test_tiny_host_bytes_are_what_the_engine_counted(rank, measured):
    # rank 4 and 64: /mint/status host_bytes over 64 resident synthetic adapters (bench/results/parallel_bench.jsonl)
    assert size("tiny", rank).host_bytes == measured


def test_a_read_is_charged_the_engines_estimate_until_it_is_built():
    # read_estimate_bytes over the PEFT file's 28 tensors (7 modules x A, B x 2 layers), unfused
    assert size("tiny", 4).reserve_bytes == 24 * 1024 + 28 * (1024 + 64) + 32_768 == 87_808


def test_the_tiny_row_is_the_model_the_demo_serves():
    row = MODELS["tiny"]
    assert {k: row[k] for k in TINY_LLAMA if k in row} == {k: v for k, v in TINY_LLAMA.items() if k in row}
    assert set(TINY_LLAMA) - set(row) == {"max_position_embeddings", "rms_norm_eps", "rope_theta", "initializer_range"}


def test_moe_mlp_targets_cover_every_expert():
    # Qwen3-30B-A3B: 48 layers, 128 experts of width 768 on hidden 2048
    mlp = size("qwen3-30b-a3b", 8, ["mlp"])
    assert mlp.values == 8 * 48 * 128 * 3 * (2048 + 768)
    attention = size("qwen3-30b-a3b", 8, ["attention"])
    assert attention.values == 8 * 48 * ((2048 + 4096) * 2 + (2048 + 512) * 2)


def test_deepseek_targets_are_its_mla_modules_and_dense_layers_stay_dense():
    spec = model_spec("deepseek-v3")
    assert resolve_targets(spec.base, ["attention"]) == ("q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                                                         "o_proj")
    down = size("deepseek-v3", 1, ["down_proj"]).values
    assert down == 3 * (18432 + 7168) + 58 * (256 + 1) * (2048 + 7168)  # 3 dense layers, then 256 experts + shared


def test_the_layers_that_route_to_experts_are_the_base_records():
    """DeepSeek with moe_layer_freq 2, as SGLang builds it: layers 3.. that are even route to experts (29 of 61),
    the other 32 are dense (BaseModel.moe_layers, adapters/base_model.py)."""
    row = {k: v for k, v in MODELS["deepseek-v3"].items() if k not in ("name", "dtype")}
    config = {**row, "moe_layer_freq": 2}
    base = base_model_from_config(config, "every-other")
    down = adapter_size(base, 1, ("down_proj",), 2, 2).values
    assert down == 32 * (18432 + 7168) + 29 * (256 + 1) * (2048 + 7168)
    moe_layer = 256 * 3 * 7168 * 2048 + 3 * 7168 * 2048 + 7168 * 256  # routed experts, shared expert, router
    dense_layer = 3 * 7168 * 18432
    assert weight_bytes(row, model_spec("deepseek-v3").base, 1) - weight_bytes(config, base, 1) == \
        (58 - 29) * (moe_layer - dense_layer)


# meta-llama/Llama-4-Maverick-17B-128E-Instruct's config.json, vision_config left out
LLAMA4_MAVERICK = {
    "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4", "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "boi_token_index": 200080, "eoi_token_index": 200081, "image_token_index": 200092,
    "text_config": {
        "model_type": "llama4_text", "attention_bias": False, "attention_chunk_size": 8192, "head_dim": 128,
        "hidden_act": "silu", "hidden_size": 5120, "interleave_moe_layer_step": 2, "intermediate_size": 8192,
        "intermediate_size_mlp": 16384, "max_position_embeddings": 1048576, "num_attention_heads": 40,
        "num_experts_per_tok": 1, "num_hidden_layers": 48, "num_key_value_heads": 8, "num_local_experts": 128,
        "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "use_qk_norm": False, "vocab_size": 202048},
}


def test_llama_4_maverick_and_qwen3_next_count_experts_on_the_layers_sglang_gives_them(tmp_path):
    """Maverick (interleave_moe_layer_step 2): 128 experts on the 24 odd layers, not on all 48 (llama4.py
    _is_moe_layer); Qwen3-Next: on every layer (qwen3_next.py). Counted from a config.json, as `mint plan`."""
    (tmp_path / "maverick").mkdir()
    (tmp_path / "maverick" / "config.json").write_text(json.dumps(LLAMA4_MAVERICK))
    spec = model_spec(str(tmp_path / "maverick"))
    experts = [layer for layer in range(48) if any(m.parent == "experts" for m in layer_linears(spec.base, layer))]
    assert experts == list(range(1, 48, 2))
    expert_params = sum(m.fan_in * m.fan_out * m.count for layer in range(48)
                        for m in layer_linears(spec.base, layer) if m.parent == "experts")
    assert expert_params == 24 * 128 * 3 * 5120 * 8192
    qwen3_next = {"architectures": ["Qwen3NextForCausalLM"], "model_type": "qwen3_next", "hidden_size": 2048,
                  "intermediate_size": 5120, "moe_intermediate_size": 512, "shared_expert_intermediate_size": 512,
                  "num_experts": 512, "num_hidden_layers": 48, "num_attention_heads": 16, "num_key_value_heads": 2,
                  "head_dim": 256, "vocab_size": 151936, "decoder_sparse_step": 1, "mlp_only_layers": []}
    base = base_model_from_config(qwen3_next, "Qwen3-Next-80B-A3B")
    assert base.moe_layers == tuple(range(48))
    assert adapter_size(base, 1, ("down_proj",), 2, 2).values == 48 * (512 + 1) * (512 + 2048)


def test_an_unknown_target_names_the_modules_there_are():
    with pytest.raises(MintError, match="not a module of Llama-3-8B; it has q_proj"):
        size("llama-3-8b", 16, ["q_a_proj"])


def test_a_config_json_of_ones_own(tmp_path):
    config = {**{k: v for k, v in MODELS["llama-3-8b"].items() if k not in ("name", "dtype")},
              "torch_dtype": "bfloat16", "quantization_config": {"quant_method": "fp8"}}
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    spec = model_spec(str(tmp_path / "m"))
    assert spec.base.name == "m" and spec.weight_dtype == "float8" and spec.pool_dtype == "bfloat16"
    assert weight_bytes(spec.config, spec.base, 1) == weight_bytes(*_llama(), 1)
    with pytest.raises(MintError, match="neither a known name"):
        model_spec(str(tmp_path / "absent"))


def test_a_config_json_is_read_as_the_catalog_reads_it(tmp_path):
    """One reader (adapters/base_model.py read_config): a UTF-8 BOM is read, a refusal names the file and key."""
    config = {k: v for k, v in MODELS["llama-3-8b"].items() if k not in ("name", "dtype")}
    (tmp_path / "bom").mkdir()
    (tmp_path / "bom" / "config.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(config).encode())
    spec = model_spec(str(tmp_path / "bom"))
    assert weight_bytes(spec.config, spec.base, 1) == weight_bytes(*_llama(), 1)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text(json.dumps({**config, "text_config": "llama"}))
    with pytest.raises(MintError, match=f"{tmp_path}/bad/config.json: text_config is a str, not a JSON object"):
        model_spec(str(tmp_path / "bad"))


def _llama():
    spec = model_spec("Llama-3-8B")
    return spec.config, spec.base


def test_gpus_by_name():
    assert gpu("H100").hbm_bytes == 80 * 10**9 and gpu("h200-141gb").hbm_bytes == 141 * 10**9
    with pytest.raises(MintError, match="unknown GPU"):
        gpu("v100")
