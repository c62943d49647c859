"""Common base models and GPUs by name, so a plan needs no download; or a config.json of one's own.

The model rows are the shape fields of each model's published config.json (HuggingFace names),
enough for ``sizes.py`` to count weights and adapter tensors: Llama-3-8B comes out at 8.03 x 10^9
parameters, Llama-3-70B 70.6, Qwen3-30B-A3B 30.5, DeepSeek-V3 671 (its MTP layer left out).
``tiny`` is the random 2-layer Llama that ``make demo`` and the tests serve.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sglang_mint.adapters.base_model import BaseModel, base_model_from_config, read_config, text_part
from sglang_mint.errors import MintError

BYTES_PER_VALUE = {"float32": 4, "bfloat16": 2, "float16": 2, "float8": 1}

MODELS: dict[str, dict] = {
    "llama-3-8b": {"name": "Llama-3-8B", "dtype": "bfloat16", "model_type": "llama", "hidden_size": 4096,
                   "intermediate_size": 14336, "num_hidden_layers": 32, "num_attention_heads": 32,
                   "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "llama-3-70b": {"name": "Llama-3-70B", "dtype": "bfloat16", "model_type": "llama", "hidden_size": 8192,
                    "intermediate_size": 28672, "num_hidden_layers": 80, "num_attention_heads": 64,
                    "num_key_value_heads": 8, "vocab_size": 128256, "tie_word_embeddings": False},
    "qwen3-30b-a3b": {"name": "Qwen3-30B-A3B", "dtype": "bfloat16", "model_type": "qwen3_moe", "hidden_size": 2048,
                      "intermediate_size": 6144, "moe_intermediate_size": 768, "num_experts": 128,
                      "num_hidden_layers": 48, "num_attention_heads": 32, "num_key_value_heads": 4, "head_dim": 128,
                      "vocab_size": 151936, "tie_word_embeddings": False, "decoder_sparse_step": 1,
                      "mlp_only_layers": []},
    # Weights in fp8 as published; the LoRA pool is bf16.
    "deepseek-v3": {"name": "DeepSeek-V3", "dtype": "float8", "model_type": "deepseek_v3", "hidden_size": 7168,
                    "intermediate_size": 18432, "moe_intermediate_size": 2048, "n_routed_experts": 256,
                    "n_shared_experts": 1, "first_k_dense_replace": 3, "num_hidden_layers": 61,
                    "num_attention_heads": 128, "num_key_value_heads": 128, "q_lora_rank": 1536,
                    "kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128,
                    "vocab_size": 129280, "tie_word_embeddings": False},
    "tiny": {"name": "tiny", "dtype": "float32", "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
             "vocab_size": 512, "tie_word_embeddings": False},
}


@dataclass(frozen=True)
class GPU:
    name: str
    hbm_bytes: int
    pcie_bytes_per_s: float  # host -> device copies: about 80% of the x16 link's nominal rate


GPUS = {
    "h100": GPU("H100 80GB", 80 * 10**9, 50e9),  # PCIe 5.0 x16: 64 GB/s nominal
    "h200": GPU("H200 141GB", 141 * 10**9, 50e9),  # PCIe 5.0 x16
    "a100": GPU("A100 80GB", 80 * 10**9, 25e9),  # PCIe 4.0 x16: 32 GB/s nominal
}


@dataclass(frozen=True)
class ModelSpec:
    """A base model to plan for: its config.json fields, dims and the bytes of one weight."""
    config: dict
    base: BaseModel
    weight_dtype: str

    @property
    def pool_dtype(self) -> str:
        """SGLang's LoRA pool takes the model's compute dtype; fp8 weights compute in bf16."""
        return "bfloat16" if self.weight_dtype == "float8" else self.weight_dtype


def model_spec(name_or_path: str) -> ModelSpec:
    """A name of ``MODELS`` (any case), or a path to a config.json or the folder holding one."""
    row = MODELS.get(name_or_path.lower())
    if row is not None:
        config = {k: v for k, v in row.items() if k not in ("name", "dtype")}
        return ModelSpec(config, base_model_from_config(config, row["name"]), row["dtype"])
    path = os.path.join(name_or_path, "config.json") if os.path.isdir(name_or_path) else name_or_path
    if not os.path.isfile(path):
        raise MintError(f"model {name_or_path!r} is neither a known name ({', '.join(MODELS)}) "
                        "nor a config.json or a folder holding one")
    config = read_config(path)  # as the catalog reads it
    name = os.path.basename(os.path.dirname(os.path.abspath(path))) or path
    return ModelSpec(text_part(config, path)[0], base_model_from_config(config, name, path), config_dtype(config))


def config_dtype(config: dict) -> str:
    """The weights' dtype a config.json states: ``quantization_config.quant_method == "fp8"`` -> float8,
    else ``torch_dtype`` (or ``dtype``), bfloat16 when it names none we know."""
    quant = config.get("quantization_config") or {}
    if str(quant.get("quant_method", "")).lower() == "fp8":
        return "float8"
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return dtype if dtype in BYTES_PER_VALUE else "bfloat16"


def gpu(name: str) -> GPU:
    """``h100`` (or ``H100``, ``h100-80gb``) -> the row of ``GPUS``."""
    key = name.lower().split("-")[0]
    if key not in GPUS:
        raise MintError(f"unknown GPU {name!r}; known: {', '.join(GPUS)} (or give --hbm-gb and --pcie-gbps)")
    return GPUS[key]
