"""The packed pool fill leaves every LoRA pool buffer bit-identical to SGLang's own fill.

Real ``LoRAMemoryPool`` objects on CPU (sglang_mint.dev.standin_pool: a
stand-in base model the pool sizes itself from, real LoRA layer classes for
the slice methods). The same adapter goes into one pool through
SGLang's path (PEFT tensors, ``initialize_weights_from_tensors``) and into
another through ours (its packed file, ``load_packed_into``); slots are
poisoned first so every zero fill SGLang does must be matched.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packed"))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _standin_pool import poison, pools_equal, standin_base_and_modules, standin_pool, tp1  # noqa: E402
from packed_layouts import E, H, I, write_layout  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

HEADS, KV_HEADS = 4, 2  # head_dim 8: q 32, k/v 16, as packed_layouts writes
DENSE_I = 40


@pytest.fixture(scope="module", autouse=True)
def parallel_tp1():
    with tp1():
        yield


def hf_config(moe: bool):
    from transformers import LlamaConfig, Qwen3MoeConfig

    common = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  head_dim=H // HEADS, vocab_size=64)
    if moe:
        return Qwen3MoeConfig(**common, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                              intermediate_size=DENSE_I, mlp_only_layers=[])
    return LlamaConfig(**common, intermediate_size=DENSE_I)


def make_pool(cfg, base, max_rank: int, shared_outer=False, dtype=torch.float32):
    return standin_pool(cfg, base, max_rank, {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}, slots=2,
                        dtype=dtype, shared_outer=shared_outer)


def adapters(folder: Path, cfg, base, tmp: Path):
    """(SGLang's own LoRAAdapter from the PEFT tensors, ours from the packed file)."""
    from safetensors.torch import load_file
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig

    from sglang_mint.packed import PACKED_FILE
    from sglang_mint.packed.convert import pack_folder
    from sglang_mint.sglang.packed_loader import load_packed_into

    native = LoRAAdapter("a", LoRAConfig(str(folder)), cfg, LoadConfig(), lora_backend=None, base_model=base)
    native.initialize_weights_from_tensors(load_file(str(folder / "adapter_model.safetensors")))
    pk = tmp / (folder.name + "-packed")
    pack_folder(str(folder), str(pk))
    ours = LoRAAdapter("a", LoRAConfig(str(pk)), cfg, LoadConfig(), lora_backend=None, base_model=base)
    load_packed_into(ours, str(pk / PACKED_FILE))
    return native, ours


def fill_both(cfg, base, modules, native, ours, max_rank, shared_outer=False, dtype=torch.float32, slot=1):
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    from sglang_mint.sglang.packed_pool import load_lora_weight_to_buffer

    original = LoRAMemoryPool.load_lora_weight_to_buffer  # hooks are not applied in the test process
    theirs_pool = make_pool(cfg, base, max_rank, shared_outer, dtype)
    ours_pool = make_pool(cfg, base, max_rank, shared_outer, dtype)
    poison(theirs_pool, 1)
    poison(ours_pool, 1)
    original(theirs_pool, "a", slot, native, modules, None, None)
    load_lora_weight_to_buffer(original, ours_pool, "a", slot, ours, modules, None, None)
    assert pools_equal(theirs_pool, ours_pool) == []
    return ours.mint_packed["pool_fill"]


@pytest.mark.parametrize("layout,max_rank,shared_outer,dtype", [
    ("per_expert", 8, False, torch.float32),     # max rank above the adapter's: spaced slices, zeroed tails
    ("per_expert", 4, False, torch.float32),     # max rank = adapter rank: every slot fully covered
    ("packed3d", 16, False, torch.bfloat16),     # adapter fp32 -> pool bf16: scaled in fp32, then cast
    ("shared_outer", 8, True, torch.float32),    # [1, ...] gate_up A and down B
])
def test_moe_pool_bit_identical(tmp_path, layout, max_rank, shared_outer, dtype):
    cfg = hf_config(moe=True)
    base, modules = standin_base_and_modules(cfg)
    native, ours = adapters(write_layout(tmp_path / layout, layout, seed=3), cfg, base, tmp_path)
    stats = fill_both(cfg, base, modules, native, ours, max_rank, shared_outer, dtype)
    # one copy per layer-module tensor: qkv, o (o has none: zero fill), gate_up_moe, down_moe; A and B
    assert stats["copies"] == 2 * 3 * 2, stats


def _dense_folder(folder: Path, rank: int, alpha: float, modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                  "gate_proj", "up_proj", "down_proj")):
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(rank)
    shape = {"q_proj": (H, H), "k_proj": (H, 16), "v_proj": (H, 16), "o_proj": (H, H),
             "gate_proj": (H, DENSE_I), "up_proj": (H, DENSE_I), "down_proj": (DENSE_I, H)}
    t = {}
    for layer in range(2):
        for m in modules:
            parent = "mlp" if m in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            key = f"base_model.model.model.layers.{layer}.{parent}.{m}"
            t[key + ".lora_A.weight"] = torch.randn(rank, shape[m][0], generator=g)
            t[key + ".lora_B.weight"] = torch.randn(shape[m][1], rank, generator=g)
    folder.mkdir(parents=True)
    save_file(t, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(modules)}))
    return folder


@pytest.mark.parametrize("rank,max_rank,modules,copies", [
    (3, 8, ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"), 2 * 4 * 2),
    (1, 1, ("q_proj", "v_proj", "down_proj"), 2 * 2 * 2),  # rank 1 = max rank; o_proj/gate_up absent: zeroed
])
def test_dense_pool_bit_identical(tmp_path, rank, max_rank, modules, copies):
    cfg = hf_config(moe=False)
    base, lora_modules = standin_base_and_modules(cfg)
    native, ours = adapters(_dense_folder(tmp_path / "d", rank, 2.5 * rank, modules), cfg, base, tmp_path)
    assert fill_both(cfg, base, lora_modules, native, ours, max_rank, slot=0)["copies"] == copies


def test_peft_adapters_keep_sglangs_path(tmp_path):
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    from sglang_mint.sglang.packed_pool import load_lora_weight_to_buffer

    cfg = hf_config(moe=False)
    base, lora_modules = standin_base_and_modules(cfg)
    native, _ = adapters(_dense_folder(tmp_path / "d", 2, 4.0), cfg, base, tmp_path)
    calls = []

    def original(*args):
        calls.append(args)
        return LoRAMemoryPool.load_lora_weight_to_buffer(*args)

    pool = make_pool(cfg, base, 4)
    load_lora_weight_to_buffer(original, pool, "a", 0, native, lora_modules, None, None)
    load_lora_weight_to_buffer(original, pool, None, 1, None, lora_modules, None, None)  # base model slot
    assert len(calls) == 2
