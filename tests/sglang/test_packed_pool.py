"""The packed pool fill leaves every LoRA pool buffer bit-identical to SGLang's own fill.

Real ``LoRAMemoryPool`` objects on CPU (a stand-in base model: a config, one
parameter and, for MoE, a FusedMoE instance the pool detects); real LoRA layer
classes for the slice methods. The same adapter goes into one pool through
SGLang's path (PEFT tensors, ``initialize_weights_from_tensors``) and into
another through ours (its packed file, ``load_packed_into``); slots are
poisoned first so every zero fill SGLang does must be matched.
"""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "packed"))
from packed_layouts import E, H, I, write_layout  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")

HEADS, KV_HEADS = 4, 2  # head_dim 8: q 32, k/v 16, as packed_layouts writes
DENSE_I = 40


@pytest.fixture(scope="module", autouse=True)
def parallel_tp1():
    from sglang.srt.runtime_context import get_parallel

    with get_parallel().override(tp_size=1, tp_rank=0, attn_tp_size=1, attn_tp_rank=0, moe_ep_size=1,
                                 moe_ep_rank=0, moe_tp_size=1, moe_tp_rank=0):
        yield


def hf_config(moe: bool):
    from transformers import LlamaConfig, Qwen3MoeConfig

    common = dict(hidden_size=H, num_hidden_layers=2, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                  head_dim=H // HEADS, vocab_size=64)
    if moe:
        return Qwen3MoeConfig(**common, moe_intermediate_size=I, num_experts=E, num_experts_per_tok=2,
                              intermediate_size=DENSE_I, mlp_only_layers=[])
    return LlamaConfig(**common, intermediate_size=DENSE_I)


def _bare(cls, **attrs):
    m = cls.__new__(cls)
    nn.Module.__init__(m)
    for k, v in attrs.items():
        object.__setattr__(m, k, v)
    return m


def base_and_modules(cfg, moe: bool):
    """A base model the pool can size itself from, and lora_modules as LoRAManager builds them."""
    from sglang.srt.layers.moe.fused_moe_triton.layer import FusedMoE
    from sglang.srt.lora import layers as L

    base = nn.Module()
    base.config = cfg
    base.p = nn.Parameter(torch.zeros(1))
    head = H // HEADS
    modules = []
    for layer in range(2):
        pre = f"model.layers.{layer}."
        qkv = _bare(L.QKVParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
            q_proj_shard_size=HEADS * head, kv_proj_shard_size=KV_HEADS * head, num_kv_head_replicas=1,
            tp_group=None, kv_tp_group=None, total_num_heads=HEADS, head_size=head, total_num_kv_heads=KV_HEADS))
        o = _bare(L.RowParallelLinearWithLoRA, base_layer=types.SimpleNamespace(tp_group=None, input_size_per_partition=H))
        mods = {pre + "self_attn.qkv_proj": qkv, pre + "self_attn.o_proj": o}
        if moe:
            inner = _bare(FusedMoE, moe_runner_config=types.SimpleNamespace(is_gated=True), moe_tp_rank=0,
                          is_shared_fused_moe=False)
            base.add_module(f"moe{layer}", inner)
            mods[pre + "mlp.experts"] = _bare(L.FusedMoEWithLoRA, base_layer=inner, tp_size=1,
                                              _uses_interleaved_gate_up=False)
        else:
            mods[pre + "mlp.gate_up_proj"] = _bare(L.MergedColumnParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                tp_group=None, output_partition_sizes=[DENSE_I, DENSE_I], output_sizes=[DENSE_I, DENSE_I]))
            mods[pre + "mlp.down_proj"] = _bare(L.RowParallelLinearWithLoRA, base_layer=types.SimpleNamespace(
                tp_group=None, input_size_per_partition=DENSE_I))
        modules.append(mods)
    return base, modules


def make_pool(cfg, base, max_rank: int, shared_outer=False, dtype=torch.float32):
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    targets = {"qkv_proj", "o_proj", "gate_up_proj", "down_proj"}
    return LoRAMemoryPool(cfg, max_loras_per_batch=2, dtype=dtype, max_lora_rank=max_rank, target_modules=targets,
                          base_model=base, eviction_policy="lru", lora_added_tokens_size=0,
                          experts_shared_outer_loras=shared_outer)


def poison(pool, seed):
    g = torch.Generator().manual_seed(seed)
    for bufs in (pool.A_buffer, pool.B_buffer):
        for layers in bufs.values():
            for t in layers:
                t.copy_(torch.randn(t.shape, generator=g).to(t.dtype))


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
    for name in ("A_buffer", "B_buffer"):
        a, b = getattr(theirs_pool, name), getattr(ours_pool, name)
        assert a.keys() == b.keys()
        for key in a:
            for layer, (x, y) in enumerate(zip(a[key], b[key])):
                assert x.dtype == y.dtype and torch.equal(x.view(torch.uint8), y.view(torch.uint8)), (name, key, layer)
    return ours.mint_packed["pool_fill"]


@pytest.mark.parametrize("layout,max_rank,shared_outer,dtype", [
    ("per_expert", 8, False, torch.float32),     # max rank above the adapter's: spaced slices, zeroed tails
    ("per_expert", 4, False, torch.float32),     # max rank = adapter rank: every slot fully covered
    ("packed3d", 16, False, torch.bfloat16),     # adapter fp32 -> pool bf16: scaled in fp32, then cast
    ("shared_outer", 8, True, torch.float32),    # [1, ...] gate_up A and down B
])
def test_moe_pool_bit_identical(tmp_path, layout, max_rank, shared_outer, dtype):
    cfg = hf_config(moe=True)
    base, modules = base_and_modules(cfg, moe=True)
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
    base, lora_modules = base_and_modules(cfg, moe=False)
    native, ours = adapters(_dense_folder(tmp_path / "d", rank, 2.5 * rank, modules), cfg, base, tmp_path)
    assert fill_both(cfg, base, lora_modules, native, ours, max_rank, slot=0)["copies"] == copies


def test_peft_adapters_keep_sglangs_path(tmp_path):
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    from sglang_mint.sglang.packed_pool import load_lora_weight_to_buffer

    cfg = hf_config(moe=False)
    base, lora_modules = base_and_modules(cfg, moe=False)
    native, _ = adapters(_dense_folder(tmp_path / "d", 2, 4.0), cfg, base, tmp_path)
    calls = []

    def original(*args):
        calls.append(args)
        return LoRAMemoryPool.load_lora_weight_to_buffer(*args)

    pool = make_pool(cfg, base, 4)
    load_lora_weight_to_buffer(original, pool, "a", 0, native, lora_modules, None, None)
    load_lora_weight_to_buffer(original, pool, None, 1, None, lora_modules, None, None)  # base model slot
    assert len(calls) == 2
