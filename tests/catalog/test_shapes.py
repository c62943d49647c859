"""Shape checks for every module kind: MoE experts (per-expert, 3D, PEFT fused), shared experts, MLA, DSA indexer.

Every refusal names the tensor, its shape and the shape expected; an out-of-range expert names the expert and
the base's count. The tiny MoE adapters of every form (sglang_mint/dev/tiny_moe.py) import, PEFT and packed.
"""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch
from safetensors.torch import load_file

from sglang_mint.adapters.base_model import BaseModel, base_model_from_config, load_base_model
from sglang_mint.adapters.errors import BaseModelMismatch, InvalidAdapter
from sglang_mint.adapters.peft import check_lora, check_tensors, read_peft_folder
from sglang_mint.dev.tiny_moe import FORMS, write_tiny_moe, write_tiny_moe_adapters

L0 = "base_model.model.model.layers.0."
L1 = "base_model.model.model.layers.1."
NEW_FIELDS = ("moe_intermediate_size", "shared_expert_intermediate_size", "q_lora_rank", "kv_lora_rank",
              "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """{family: (model folder, BaseModel, {form: adapter folder})}; adapters of rank 4 (8 after PEFT's fused 2r)."""
    out = {}
    for family in ("qwen3-moe", "deepseek-v3"):
        root = tmp_path_factory.mktemp(family)
        model = write_tiny_moe(root / "model", family, seed=0)
        out[family] = (model, load_base_model(str(model)), write_tiny_moe_adapters(model, root / "adapters", seed=0))
    return out


def _load(folder):
    cfg = json.loads((folder / "adapter_config.json").read_text())
    return cfg, load_file(str(folder / "adapter_model.safetensors"))


def _header(tensors: dict) -> dict:
    return {k: ("F32", list(v.shape)) for k, v in tensors.items()}


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _refused(tensors, cfg, base, err, *words):
    """check_lora (tensors in memory, as the scheduler has them) and check_tensors (an import's header) agree."""
    with pytest.raises(err) as info:
        check_lora(cfg, tensors, base, "ad")
    with pytest.raises(err, match=re.escape(str(info.value))):
        check_tensors(_header(tensors), cfg, base, "ad")
    for w in words:
        assert w in str(info.value), str(info.value)
    return str(info.value)


@pytest.mark.parametrize("family", ["qwen3-moe", "deepseek-v3"])
def test_tiny_moe_adapters_of_every_form_import(family, tiny, tmp_path):
    from sglang_mint.catalog import init_catalog

    model, base, forms = tiny[family]
    assert base.num_experts == 8 and base.moe_intermediate_size == 32
    assert set(forms) == set(FORMS)
    cat = init_catalog(str(tmp_path / "cat"), str(model))
    try:
        for form, folder in forms.items():
            got = read_peft_folder(str(folder), base)
            assert {"gate_up_proj" if form == "peft-fused" else "gate_proj", "down_proj"} <= set(got.target_modules)
            # PEFT's fused experts are stored packed whatever the publish asks: SGLang serves them only so
            assert cat.publish(f"{form}/peft", str(folder)).format == ("packed" if form == "peft-fused" else "peft")
            assert cat.publish(f"{form}/packed", str(folder), pack=True).format == "packed"
    finally:
        cat.close()


def test_check_lora_on_tensors_in_memory(tiny):
    """The scheduler's entry point: adapter_config.json as a dict + safetensors.torch.load_file's tensors."""
    _, base, forms = tiny["deepseek-v3"]
    for form, folder in forms.items():
        cfg, t = _load(folder)
        assert check_lora(cfg, t, base, form) == check_tensors(_header(t), cfg, base, form)
        bf16 = {k: v.to(torch.bfloat16) for k, v in t.items()}
        assert check_lora(cfg, bf16, base, form)[1] == "bfloat16"
    key = next(iter(t))
    with pytest.raises(InvalidAdapter, match=re.escape(f"{key!r} has dtype torch.int32; LoRA weights must be F16")):
        check_lora(cfg, {**t, key: t[key].to(torch.int32)}, base, "ad")
    with pytest.raises(InvalidAdapter, match="rank r must be a positive integer, got 0"):
        check_lora({**cfg, "r": 0}, t, base, "ad")
    with pytest.raises(InvalidAdapter, match=r"alpha_pattern\['o_proj'\] must be a positive finite number"):
        check_lora({**cfg, "alpha_pattern": {"o_proj": -1}}, t, base, "ad")


def test_base_records_every_width(tiny):
    ds = tiny["deepseek-v3"][1]
    mla = (ds.q_lora_rank, ds.kv_lora_rank, ds.qk_nope_head_dim, ds.qk_rope_head_dim, ds.v_head_dim)
    assert mla == (48, 256, 16, 32, 16)
    assert ds.shared_expert_intermediate_size == 32  # moe_intermediate_size 32 x n_shared_experts 1
    assert ds.module_shape("self_attn", "kv_a_proj_with_mqa") == (64, 256 + 32)
    assert ds.module_shape("self_attn", "kv_b_proj") == (256, 2 * (16 + 16))
    assert ds.module_shape("self_attn", "q_b_proj") == (48, 2 * (16 + 32))
    assert ds.module_shape("self_attn", "o_proj") == (2 * 16, 64)
    qwen2 = base_model_from_config({"model_type": "qwen2_moe", "hidden_size": 64, "num_attention_heads": 4,
                                    "num_hidden_layers": 2, "intermediate_size": 128, "moe_intermediate_size": 32,
                                    "shared_expert_intermediate_size": 80, "num_experts": 8}, "q2")
    assert qwen2.module_shape("shared_expert", "down_proj") == (80, 64)
    assert qwen2.module_shape("experts", "up_proj") == (64, 32)
    mixtral = base_model_from_config({"model_type": "mixtral", "hidden_size": 64, "num_attention_heads": 4,
                                      "num_hidden_layers": 2, "intermediate_size": 96, "num_local_experts": 8}, "mx")
    assert mixtral.module_shape("experts", "w1") == (64, 96) and mixtral.module_shape("experts", "w2") == (96, 64)


# -- MoE experts, per expert: ...mlp.experts.<e>.<proj> [r, in] / [out, r] ----------------------------------------

def test_per_expert_wrong_width_and_missing_expert(tiny):
    _, base, forms = tiny["qwen3-moe"]
    cfg, t = _load(forms["per-expert"])
    key = L0 + "mlp.experts.3.gate_proj.lora_A.weight"
    _refused({**t, key: _rand(8, 65)}, cfg, base, BaseModelMismatch, key, "[8, 65]", "expected [8, 64]")
    key = L1 + "mlp.experts.5.down_proj.lora_B.weight"
    _refused({**t, key: _rand(63, 8)}, cfg, base, BaseModelMismatch, key, "[63, 8]", "expected [64, 8]")
    extra = {k.replace("experts.0.", "experts.9."): v for k, v in t.items() if "experts.0.up_proj" in k}
    _refused({**t, **extra}, cfg, base, BaseModelMismatch,
             L0 + "mlp.experts.9.up_proj.lora_A.weight: expert 9 does not exist: base has 8 experts")


def test_mixtral_names_are_experts_too(tiny):
    _, base, _ = tiny["qwen3-moe"]
    cfg = {"peft_type": "LORA", "r": 2, "target_modules": ["w1", "w2"]}
    pre = "base_model.model.model.layers.0.block_sparse_moe.experts.7."
    good = {pre + "w1.lora_A.weight": _rand(2, 64), pre + "w1.lora_B.weight": _rand(32, 2),
            pre + "w2.lora_A.weight": _rand(2, 32), pre + "w2.lora_B.weight": _rand(64, 2)}
    check_lora(cfg, good, base, "ad")
    key = pre + "w2.lora_A.weight"
    _refused({**good, key: _rand(2, 128)}, cfg, base, BaseModelMismatch, key, "[2, 128]", "expected [2, 32]")


# -- MoE experts, 3D: ...mlp.experts.<proj> [E, r, in] / [E, out, r] ---------------------------------------------

def test_3d_experts_wrong_width_and_count(tiny):
    _, base, forms = tiny["qwen3-moe"]
    cfg, t = _load(forms["packed3d"])
    key = L0 + "mlp.experts.up_proj.lora_B.weight"
    _refused({**t, key: _rand(8, 33, 8)}, cfg, base, BaseModelMismatch, key, "[8, 33, 8]", "expected [8, 32, 8]")
    key = L1 + "mlp.experts.gate_proj.lora_A.weight"
    _refused({**t, key: _rand(9, 8, 64)}, cfg, base, BaseModelMismatch, key, "[9, 8, 64]", "expected [8, 8, 64]",
             "9 experts, base has 8 experts")
    # One A for every expert (shared-outer): SGLang serves that only in a server-wide mode it turns on at
    # startup for --lora-paths adapters, never for a catalog's; on real Qwen3-MoE and DeepSeek-V3 servers
    # such an adapter was served wrong (0.23 and 0.096 from HF+PEFT). Refused, naming the fix.
    _refused({**t, key: _rand(1, 8, 64)}, cfg, base, InvalidAdapter, key, "[1, 8, 64]", "shared-outer",
             "repeat it to the 8 experts")


# -- MoE experts, PEFT 0.21 fused: ...mlp.experts(.base_layer).lora_A [E*r, in] / lora_B [out, r*E] --------------

def test_peft_fused_experts_wrong_width_and_count(tiny):
    _, base, forms = tiny["qwen3-moe"]
    cfg, t = _load(forms["peft-fused"])
    a, b = L0 + "mlp.experts.base_layer.lora_A.weight", L0 + "mlp.experts.base_layer.lora_B.weight"
    assert (list(t[a].shape), list(t[b].shape)) == ([64, 64], [64, 64])  # gate_up_proj: 8 experts x rank 8
    _refused({**t, a: _rand(72, 64), b: _rand(64, 72)}, cfg, base, BaseModelMismatch,
             a, "[72, 64]", "expected [64, 64]", "9 experts, base has 8 experts")
    wider = dataclasses.replace(base, moe_intermediate_size=48)  # the same adapter against experts of width 48
    _refused(t, cfg, wider, BaseModelMismatch, L0 + "mlp.experts.lora_A.weight", "[32, 32]", "expected [32, 48]")


# -- shared experts: ...mlp.shared_experts.<proj> (DeepSeek: moe width x n_shared), shared_expert (Qwen2-MoE) ------

def test_shared_experts(tiny):
    _, base, forms = tiny["deepseek-v3"]
    cfg, t = _load(forms["per-expert"])
    pre = L0 + "mlp.shared_experts."
    good = {**t, pre + "gate_proj.lora_A.weight": _rand(8, 64), pre + "gate_proj.lora_B.weight": _rand(32, 8),
            pre + "down_proj.lora_A.weight": _rand(8, 32), pre + "down_proj.lora_B.weight": _rand(64, 8)}
    check_lora(cfg, good, base, "ad")
    key = pre + "gate_proj.lora_B.weight"  # sized by intermediate_size (128), not the shared expert's 32
    _refused({**good, key: _rand(128, 8)}, cfg, base, BaseModelMismatch, key, "[128, 8]", "expected [32, 8]")
    qwen2 = dataclasses.replace(tiny["qwen3-moe"][1], shared_expert_intermediate_size=80)
    pre = L0 + "mlp.shared_expert."
    t2 = {pre + "up_proj.lora_A.weight": _rand(2, 64), pre + "up_proj.lora_B.weight": _rand(80, 2)}
    cfg2 = {"peft_type": "LORA", "r": 2, "target_modules": ["up_proj"]}
    check_lora(cfg2, t2, qwen2, "ad")
    _refused({**t2, pre + "up_proj.lora_B.weight": _rand(32, 2)}, cfg2, qwen2, BaseModelMismatch,
             pre + "up_proj.lora_B.weight", "[32, 2]", "expected [80, 2]")


# -- MLA attention (DeepSeek) --------------------------------------------------------------------------------------

@pytest.mark.parametrize("module,ab,bad,want", [
    ("q_a_proj", "B", [47, 8], [48, 8]),                 # hidden -> q_lora_rank
    ("q_b_proj", "A", [8, 49], [8, 48]),                 # q_lora_rank -> heads*(nope+rope)
    ("q_b_proj", "B", [64, 8], [96, 8]),
    ("kv_a_proj_with_mqa", "B", [256, 8], [288, 8]),     # hidden -> kv_lora_rank + rope
    ("kv_b_proj", "B", [96, 8], [64, 8]),                # kv_lora_rank -> heads*(nope+v)
    ("kv_b_proj", "A", [8, 288], [8, 256]),
    ("o_proj", "A", [8, 64], [8, 32]),                   # heads*v -> hidden
])
def test_mla_wrong_shapes(module, ab, bad, want, tiny):
    _, base, forms = tiny["deepseek-v3"]
    cfg, t = _load(forms["per-expert"])
    key = f"{L1}self_attn.{module}.lora_{ab}.weight"
    assert list(t[key].shape) == want
    _refused({**t, key: _rand(*bad)}, cfg, base, BaseModelMismatch, key, str(bad), f"expected {want}", module)


def test_mla_without_q_compression_refuses_what_sglang_cannot_serve(tiny):
    """DeepSeek-V2-Lite's attention (q_lora_rank null): q_proj and a separate kv_a_proj_with_mqa. SGLang
    0.5.23 stacks q_proj with k/v_proj (the load fails) and files kv_a_proj_with_mqa under a fused module
    the model lacks (its scheduler raised in forward and the server stopped, on a real server); kv_b_proj
    and o_proj are served."""
    base = dataclasses.replace(tiny["deepseek-v3"][1], q_lora_rank=None)
    assert base.module_shape("self_attn", "q_proj") == (64, 2 * (16 + 32))  # the module exists
    cfg = {"peft_type": "LORA", "r": 2, "target_modules": ["q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"]}
    shapes = {"q_proj": (64, 96), "kv_a_proj_with_mqa": (64, 288), "kv_b_proj": (256, 64), "o_proj": (32, 64)}
    t = {f"{L0}self_attn.{m}.lora_{ab}.weight": _rand(*((2, i) if ab == "A" else (o, 2)))
         for m, (i, o) in shapes.items() for ab in "AB"}
    for module in ("kv_a_proj_with_mqa", "q_proj"):  # the order they are checked in
        _refused(t, cfg, base, InvalidAdapter, f"{L0}self_attn.{module}.lora_A.weight", "q_lora_rank null",
                 "leave q_proj and kv_a_proj_with_mqa out of target_modules")
        t = {k: v for k, v in t.items() if f".{module}." not in k}
    check_lora({**cfg, "target_modules": ["kv_b_proj", "o_proj"]}, t, base, "ad")
    check_tensors(_header(t), {**cfg, "target_modules": ["kv_b_proj", "o_proj"]}, base, "ad")


# -- DSA indexer (DeepSeek-V3.2): indexer.wq_b, indexer.wk, indexer.weights_proj -----------------------------------

@pytest.mark.parametrize("module,ab,bad,want", [
    ("wq_b", "A", [4, 64], [4, 48]),             # q_lora_rank -> index_n_heads * index_head_dim
    ("wq_b", "B", [48, 4], [64, 4]),
    ("wk", "B", [32, 4], [16, 4]),               # hidden -> index_head_dim
    ("weights_proj", "B", [16, 4], [4, 4]),      # hidden -> index_n_heads
])
def test_dsa_indexer_wrong_shapes(module, ab, bad, want, tiny):
    base = dataclasses.replace(tiny["deepseek-v3"][1], index_n_heads=4, index_head_dim=16)
    pre = L0 + "self_attn.indexer."
    good = {}
    for m, fin, fout in (("wq_b", 48, 64), ("wk", 64, 16), ("weights_proj", 64, 4)):
        good[f"{pre}{m}.lora_A.weight"], good[f"{pre}{m}.lora_B.weight"] = _rand(4, fin), _rand(fout, 4)
    cfg = {"peft_type": "LORA", "r": 4, "target_modules": ["indexer.wq_b", "indexer.wk", "indexer.weights_proj"]}
    assert check_lora(cfg, good, base, "ad")[0] == ("weights_proj", "wk", "wq_b")
    key = f"{pre}{module}.lora_{ab}.weight"
    assert list(good[key].shape) == want
    _refused({**good, key: _rand(*bad)}, cfg, base, BaseModelMismatch, key, str(bad), f"expected {want}")


# -- old catalogs --------------------------------------------------------------------------------------------------

def test_old_catalog_without_the_new_fields_refuses_what_it_cannot_check(tiny):
    """A BaseModel stored before these fields existed opens. A module whose widths need a field it lacks is
    refused, not accepted unchecked (SGLang would serve a wrong width and assert in its forward); modules whose
    widths it has (dense attention) still import, and their rank and widths are checked."""
    for family in ("qwen3-moe", "deepseek-v3"):
        _, base, forms = tiny[family]
        old_base = BaseModel.from_json({k: v for k, v in base.to_json().items()
                                        if k not in NEW_FIELDS + ("num_experts",)})
        assert old_base.kv_lora_rank is None and old_base.moe_intermediate_size is None
        cfg, t = _load(forms["per-expert"])
        check_lora(cfg, t, base, "ad")  # a new catalog checks every width: accepted
        first = min(k for k in t if ".mlp." in k or family == "deepseek-v3")  # sorted: the first module checked
        _refused(t, cfg, old_base, InvalidAdapter, first.replace(".lora_B.", ".lora_A."), "not recorded for base model")
    _, base, forms = tiny["qwen3-moe"]
    old_base = BaseModel.from_json({k: v for k, v in base.to_json().items()
                                    if k not in NEW_FIELDS + ("num_experts",)})
    cfg, t = _load(forms["per-expert"])
    attn = {k: v for k, v in t.items() if ".self_attn." in k}
    attn_cfg = {**cfg, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
    assert check_lora(attn_cfg, attn, old_base, "ad")[0] == ("k_proj", "o_proj", "q_proj", "v_proj")
    key = L0 + "self_attn.o_proj.lora_B.weight"
    r = attn[key].shape[1]
    _refused({**attn, key: _rand(65, r)}, attn_cfg, old_base, BaseModelMismatch, key, f"expected [64, {r}]")
    _refused({**attn, key: _rand(64, r + 1)}, attn_cfg, old_base, InvalidAdapter, f"do not match rank r={r}")
