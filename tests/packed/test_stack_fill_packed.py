"""A stacked module an adapter has only part of is served the same published packed as plain.

SGLang stacks q/k/v into qkv_proj, gate/up into gate_up_proj (dense MLP, routed and shared
experts) and MLA's q_a/kv_a_proj_with_mqa into fused_qkv_a_proj_with_mqa, always starting from
one member (adapters/stack_fill.py). The plain path completes a stack with zeros of the base's
widths before SGLang's loader runs; the packed converter must store the same stacks. It used to
keep k_proj, v_proj, up_proj or kv_a_proj_with_mqa without their first member unstacked, a name
no pool module takes (every request a 422), and refused q_a_proj alone.

Each case is published to a real catalog both ways and read as the engine reads it
(sglang/adapter_reader.py read_adapter): the plain revision through load_for_serving and
SGLang's LoRAAdapter.initialize_weights_from_tensors, the packed one through packed_loader's
load_packed_into. Every layer's weights must be the same names and the same values.
Example (tiny Llama, rank 4, k_proj only): both give ``layers.0.self_attn.qkv_proj.lora_A``
[12, 128] with rows 4:8 the adapter's k_proj A, and lora_B [256, 4] with rows 128:192 its B.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from sglang_mint.catalog import init_catalog
from sglang_mint.packed import PACKED_FILE, PackedError, read_packed
from sglang_mint.packed.convert import pack_folder, unpack_tensors

R = 4
LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128, "intermediate_size": 256,
         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
         "vocab_size": 1000}
# MLA (q_lora_rank 48, kv_a 64 -> 256 + 32), 4 routed experts of width 32, one shared expert of width 32
DEEPSEEK = {"architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "hidden_size": 64,
            "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 2, "q_lora_rank": 48,
            "kv_lora_rank": 256, "qk_rope_head_dim": 32, "qk_nope_head_dim": 16, "v_head_dim": 16,
            "n_routed_experts": 4, "moe_intermediate_size": 32, "n_shared_experts": 1, "vocab_size": 1000}
# Mixtral names its experts w1 (gate), w3 (up), w2 (down) under block_sparse_moe; SGLang renames them, then stacks
MIXTRAL = {"architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 64, "intermediate_size": 32,
           "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
           "num_local_experts": 4, "num_experts_per_tok": 2, "vocab_size": 1000}
PARENT = {"q_proj": "self_attn", "k_proj": "self_attn", "v_proj": "self_attn", "o_proj": "self_attn",
          "q_a_proj": "self_attn", "kv_a_proj_with_mqa": "self_attn", "up_proj": "mlp", "gate_proj": "mlp",
          "down_proj": "mlp"}


def write_adapter(folder, base, modules, where="plain", seed=0):
    """A rank-R float32 PEFT folder of ``modules`` in every layer of ``base``; ``where``: plain (the
    module's own parent), experts (one tensor pair per routed expert), experts3d ([E, r, in] / [E, out, r])
    or shared_experts."""
    g = torch.Generator().manual_seed(seed)
    t = {}
    for layer in range(base.num_hidden_layers):
        for m in modules:
            parent = PARENT.get(m) if where == "plain" else "experts" if where.startswith(("experts", "block")) else where
            fin, fout = base.module_shape(parent, m)
            path = f"base_model.model.model.layers.{layer}." + (
                PARENT[m] if where == "plain" else "block_sparse_moe.experts" if where.startswith("block") else
                f"mlp.{parent}")
            if where in ("experts", "block_sparse_moe"):
                for e in range(base.num_experts):
                    t[f"{path}.{e}.{m}.lora_A.weight"] = torch.randn(R, fin, generator=g)
                    t[f"{path}.{e}.{m}.lora_B.weight"] = torch.randn(fout, R, generator=g)
                continue
            lead = [base.num_experts] if where == "experts3d" else []
            t[f"{path}.{m}.lora_A.weight"] = torch.randn(lead + [R, fin], generator=g)
            t[f"{path}.{m}.lora_B.weight"] = torch.randn(lead + [fout, R], generator=g)
    folder.mkdir(parents=True)
    save_file(t, str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": R, "lora_alpha": 2 * R, "target_modules": sorted(modules)}))
    return folder


@pytest.fixture(scope="module")
def catalogs(tmp_path_factory):
    """{"llama" | "deepseek" | "mixtral": (catalog, the engine's hf_config)} for the tiny bases."""
    out = {}
    for name, config in (("llama", LLAMA), ("deepseek", DEEPSEEK), ("mixtral", MIXTRAL)):
        root = tmp_path_factory.mktemp(name)
        (root / "base").mkdir()
        (root / "base" / "config.json").write_text(json.dumps(config))
        out[name] = (init_catalog(str(root / "cat"), str(root / "base")), SimpleNamespace(**config))
    yield out
    for cat, _ in out.values():
        cat.close()


def served(cat, rev, hf_config):
    """SGLang's LoRAAdapter for revision ``rev``, read as sglang/adapter_reader.py read_adapter does."""
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig

    from sglang_mint.adapters.peft import load_for_serving, read_served_config
    from sglang_mint.adapters.folder_form import packed_file
    from sglang_mint.sglang.packed_loader import load_packed_into

    path = str(cat.local_path(rev))
    config = LoRAConfig(path, config_dict=read_served_config(path, "t"), added_tokens_config=None)
    adapter = LoRAAdapter(f"{rev.adapter_id}@{rev.revision}", config, hf_config, LoadConfig(), lora_backend=None)
    if packed_file(path) is None:
        uniform_config, tensors = load_for_serving(path, config.hf_config, cat.base, "t")
        assert uniform_config is config.hf_config  # one rank, one scaling: nothing rewritten
        adapter.initialize_weights_from_tensors(tensors)
    else:
        load_packed_into(adapter, packed_file(path))
    return adapter


CASES = [  # (base, modules, where, the stacked module both must serve)
    ("llama", ("k_proj",), "plain", "self_attn.qkv_proj"),
    ("llama", ("v_proj",), "plain", "self_attn.qkv_proj"),
    ("llama", ("k_proj", "v_proj"), "plain", "self_attn.qkv_proj"),
    ("llama", ("k_proj", "o_proj", "up_proj", "down_proj"), "plain", "mlp.gate_up_proj"),
    ("llama", ("up_proj",), "plain", "mlp.gate_up_proj"),
    ("llama", ("q_proj",), "plain", "self_attn.qkv_proj"),  # zero k/v of the base's width: served packed before too
    ("deepseek", ("up_proj",), "experts", "mlp.experts.gate_up_proj"),
    ("deepseek", ("up_proj", "down_proj"), "experts3d", "mlp.experts.gate_up_proj"),
    ("deepseek", ("up_proj",), "shared_experts", "mlp.shared_experts.gate_up_proj"),
    ("deepseek", ("q_a_proj",), "plain", "self_attn.fused_qkv_a_proj_with_mqa"),
    ("deepseek", ("kv_a_proj_with_mqa",), "plain", "self_attn.fused_qkv_a_proj_with_mqa"),
    ("mixtral", ("w3",), "block_sparse_moe", "block_sparse_moe.experts.gate_up_proj"),
]


@pytest.mark.parametrize("base,modules,where,stacked", CASES,
                         ids=[f"{b}-{'+'.join(m)}-{w}" for b, m, w, _ in CASES])
def test_a_partial_stack_is_served_the_same_packed_as_plain(catalogs, tmp_path, base, modules, where, stacked):
    cat, hf_config = catalogs[base]
    folder = write_adapter(tmp_path / "src", cat.base, modules, where)
    name = f"t/{base}-{'-'.join(modules)}-{where}".replace("_", "-")
    plain = served(cat, cat.publish(name + "-plain", str(folder)), hf_config)
    rev = cat.publish(name + "-packed", str(folder), pack=True)
    packed = served(cat, rev, hf_config)
    assert rev.format == "packed" and packed.scaling == plain.scaling
    for layer in range(cat.base.num_hidden_layers):
        want, got = plain.layers[layer].weights, packed.layers[layer].weights
        assert sorted(got) == sorted(want), layer
        for key, t in want.items():
            assert got[key].shape == t.shape and torch.equal(got[key], t), key
        stack = f"base_model.model.model.layers.{layer}.{stacked}.lora_"
        assert {stack + "A.weight", stack + "B.weight"} <= set(want)  # stacked, the name SGLang's pool files
    # the zeros that complete the stack are no source tensor: unpacking gives back the folder packed
    p = read_packed(str(cat.local_path(rev)) + "/" + PACKED_FILE, pin=False)
    from safetensors.torch import load_file
    source, back = load_file(str(folder / "adapter_model.safetensors")), unpack_tensors(p.mint, p.tensors)
    assert sorted(back) == sorted(source) and all(torch.equal(back[k], source[k]) for k in source)


@pytest.mark.parametrize("modules", [("k_proj",), ("v_proj",), ("k_proj", "v_proj")], ids="+".join)
def test_packing_without_the_base_s_widths_refuses_what_it_cannot_stack(catalogs, tmp_path, modules):
    """``mint pack`` without --base knows no q_proj width: it refuses, naming both ways out, rather
    than write a file whose k_proj/v_proj no engine pool takes."""
    folder = write_adapter(tmp_path / "src", catalogs["llama"][0].base, modules)
    with pytest.raises(PackedError, match=r"lacks q_proj.*--base.*without --pack"):
        pack_folder(str(folder), str(tmp_path / "p"))
    base = tmp_path / "base"
    base.mkdir()
    (base / "config.json").write_text(json.dumps(LLAMA))
    pack_folder(str(folder), str(tmp_path / "p"), base_dir=str(base))  # with the base's widths it packs
    p = read_packed(str(tmp_path / "p" / PACKED_FILE), pin=False)
    assert p.tensors["base_model.model.model.layers.1.self_attn.qkv_proj.lora_B.weight"].shape == (128 + 64 + 64, R)


def test_up_proj_alone_packs_without_a_base(tmp_path):
    """gate_proj and up_proj always have one width: an up_proj alone needs no base to stack."""
    from sglang_mint.adapters.base_model import base_model_from_config

    folder = write_adapter(tmp_path / "src", base_model_from_config(LLAMA, "tiny"), ("up_proj",))
    pack_folder(str(folder), str(tmp_path / "p"))
    p = read_packed(str(tmp_path / "p" / PACKED_FILE), pin=False)
    b = p.tensors["base_model.model.model.layers.0.mlp.gate_up_proj.lora_B.weight"]
    assert b.shape == (2 * 256, R) and not b[:256].any()
