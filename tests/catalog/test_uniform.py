"""uniform_lora against real PEFT: rank_pattern / alpha_pattern / rsLoRA adapters, rewritten into one rank R
and lora_alpha = R, give the same logits from a plain LoraConfig(r=R, lora_alpha=R) model (fp32, 1e-5)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import read_safetensors_header
from sglang_mint.adapters.uniform_rank import uniform_lora, uniform_size
from sglang_mint.dev.tiny import randomize_lora

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "kernels"))
from kernel_cases import TOL, assert_close  # noqa: E402 - the one tolerance table

LLAMA = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CASES = {
    "rank_pattern": dict(r=4, lora_alpha=8, rank_pattern={"v_proj": 2, "down_proj": 7}),
    "alpha_pattern": dict(r=4, lora_alpha=8, alpha_pattern={"o_proj": 32, "layers.1.self_attn.q_proj": 3}),
    "both": dict(r=4, lora_alpha=8, rank_pattern={"q_proj": 8, "layers.0.mlp.up_proj": 1},
                 alpha_pattern={"up_proj": 2.5, "k_proj": 1}),
    "rslora": dict(r=6, lora_alpha=8, use_rslora=True),
    "rslora+patterns": dict(r=4, lora_alpha=8, use_rslora=True, rank_pattern={"gate_proj": 9},
                            alpha_pattern={"v_proj": 20}),
}


@pytest.fixture(scope="module")
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(**LLAMA)).to(torch.float32).eval()


def _ids(vocab: int, seed: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 11), generator=torch.Generator().manual_seed(seed))


def _logits(model, ids) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(ids).logits


def _adapter(base, folder: Path, seed: int, **lora):
    """(PEFT model with random non-zero A and B, adapter_config.json as a dict, tensors as saved)."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(base), LoraConfig(lora_dropout=0.0, **lora))
    randomize_lora(model, seed, 0.5)
    model.save_pretrained(folder)
    return (model, json.loads((folder / "adapter_config.json").read_text()),
            load_file(str(folder / "adapter_model.safetensors")))


def _plain(base, cfg: dict, tensors: dict, **lora):
    """A plain LoraConfig(r=R, lora_alpha=R) model holding the uniform tensors (every LoRA key loaded)."""
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict

    assert cfg["lora_alpha"] == cfg["r"] and not cfg.get("rank_pattern") and not cfg.get("alpha_pattern")
    assert cfg["use_rslora"] is False
    model = get_peft_model(copy.deepcopy(base), LoraConfig(r=cfg["r"], lora_alpha=cfg["r"], lora_dropout=0.0, **lora))
    res = set_peft_model_state_dict(model, tensors)
    assert not res.unexpected_keys and not [k for k in res.missing_keys if "lora_" in k], res
    return model


def _per_module(peft_model):
    """{module path: (PEFT's own scaling, A, B)} read from the live PEFT model (not from our pattern code)."""
    out = {}
    for name, mod in peft_model.named_modules():
        if hasattr(mod, "lora_A") and "default" in mod.lora_A:
            out[name] = (mod.scaling["default"], mod.lora_A["default"].weight, mod.lora_B["default"].weight)
    return out


@pytest.mark.parametrize("case", list(CASES))
def test_uniform_matches_peft(case, llama, tmp_path):
    model, cfg, tensors = _adapter(llama, tmp_path / case, seed=len(case), target_modules=TARGETS, **CASES[case])
    cfg_before, t_before = copy.deepcopy(cfg), {k: v.clone() for k, v in tensors.items()}
    ucfg, ut = uniform_lora(cfg, tensors)
    # pure: inputs untouched
    assert cfg == cfg_before and all(torch.equal(tensors[k], t_before[k]) for k in tensors)
    assert list(ut) == list(tensors)
    modules = _per_module(model)
    scalings = {round(s, 9) for s, _, _ in modules.values()}
    assert len(scalings) > 1 or CASES[case].get("use_rslora")  # the case really is one SGLang would get wrong
    R = max(a.shape[0] for _, a, _ in modules.values())
    assert (ucfg["r"], ucfg["lora_alpha"]) == (R, R)
    for name, (s, a, b) in modules.items():  # every module: [R, in] / [out, R], B' A' = s * B A, padding zero
        ua, ub = ut[f"{name}.lora_A.weight"], ut[f"{name}.lora_B.weight"]
        r = a.shape[0]
        assert ua.shape == (R, a.shape[1]) and ub.shape == (b.shape[0], R)
        assert torch.equal(ua[:r], a.detach()) and not ua[r:].any() and not ub[:, r:].any()
        assert_close(ub @ ua, s * (b.detach() @ a.detach()))
    ids = _ids(LLAMA["vocab_size"], seed=7)
    ref = _logits(model, ids)
    assert (ref - _logits(llama, ids)).abs().max() > 1e3 * TOL[torch.float32] * ref.abs().max()  # LoRA matters
    assert_close(_logits(_plain(llama, ucfg, ut, target_modules=TARGETS), ids), ref)


def test_uniform_adapter_is_returned_as_is(llama, tmp_path):
    """No patterns, no rsLoRA (PEFT writes {} and false): the same objects, no copies."""
    _, cfg, tensors = _adapter(llama, tmp_path / "plain", seed=3, r=4, lora_alpha=8, target_modules=TARGETS)
    assert cfg["rank_pattern"] == {} and cfg["alpha_pattern"] == {} and cfg["use_rslora"] is False
    ucfg, ut = uniform_lora(cfg, tensors)
    assert ucfg is cfg and ut is tensors
    bare = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}  # keys absent
    assert uniform_lora(bare, tensors)[0] is bare


@pytest.mark.parametrize("rslora", [False, True])
def test_fused_moe_experts_match_peft(rslora, tmp_path):
    """PEFT 0.21's fused experts (target_parameters; gate_up_proj rank 2r by PEFT's own rank_pattern) with
    other alphas: A [E*r, in] and B [out, r*E] are padded in PEFT's [E, r, in] / [out, r, E] order."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    torch.manual_seed(1)
    cfg = Qwen3MoeConfig(vocab_size=128, hidden_size=32, intermediate_size=48, moe_intermediate_size=24,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                         num_experts=4, num_experts_per_tok=2, mlp_only_layers=[])
    base = Qwen3MoeForCausalLM(cfg).to(torch.float32).eval()
    model, acfg, tensors = _adapter(base, tmp_path / "fused", seed=11, r=4, lora_alpha=8, use_rslora=rslora,
                                    target_modules=["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"],
                                    rank_pattern={"v_proj": 2}, alpha_pattern={"down_proj": 3, "q_proj": 5})
    assert acfg["target_parameters"] and any(".experts.base_layer.lora_A" in k for k in tensors)
    ucfg, ut = uniform_lora(acfg, tensors)
    R = ucfg["r"]
    assert R == 8  # gate_up_proj's 2r
    assert uniform_size(acfg, _header(tensors)) == _bytes(ut) > _bytes(tensors)  # PEFT's fused experts
    key = "base_model.model.model.layers.0.mlp.experts.lora_A.weight"  # down_proj: 4 experts x rank 4 -> 4 x 8
    assert tensors[key].shape == (16, 24) and ut[key].shape == (4 * R, 24)
    ids = _ids(128, seed=5)
    ref = _logits(model, ids)
    assert (ref - _logits(base, ids)).abs().max() > 1e3 * TOL[torch.float32] * ref.abs().max()
    plain = _plain(base, ucfg, ut, target_modules=["q_proj", "v_proj"],
                   target_parameters=["gate_up_proj", "down_proj"])
    assert_close(_logits(plain, ids), ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_expert_layouts_are_padded_on_the_rank_dim(dtype):
    """Per-expert 2D, 3D [E, r, in] / [E, out, r] and shared-outer [1, r, in]: B' A' = s * B A per expert;
    B is scaled in fp32 and cast back once."""
    g = torch.Generator().manual_seed(2)
    E, H, I = 3, 20, 12
    pre = "base_model.model.model.layers.0.mlp.experts."
    t = {}
    for e in range(E):
        t[f"{pre}{e}.gate_proj.lora_A.weight"] = torch.randn(4, H, generator=g)
        t[f"{pre}{e}.gate_proj.lora_B.weight"] = torch.randn(I, 4, generator=g)
    t[pre + "down_proj.lora_A.weight"] = torch.randn(E, 2, I, generator=g)
    t[pre + "down_proj.lora_B.weight"] = torch.randn(E, H, 2, generator=g)
    t[pre + "up_proj.lora_A.weight"] = torch.randn(1, 4, H, generator=g)  # shared-outer A
    t[pre + "up_proj.lora_B.weight"] = torch.randn(E, I, 4, generator=g)
    t = {k: v.to(dtype) for k, v in t.items()}
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 6, "rank_pattern": {"down_proj": 2},
           "alpha_pattern": {"up_proj": 3}, "target_modules": ["gate_proj", "up_proj", "down_proj"]}
    ucfg, ut = uniform_lora(cfg, t)
    assert (ucfg["r"], ucfg["lora_alpha"], ucfg["use_rslora"]) == (4, 4, False) and "rank_pattern" not in ucfg
    # What the host budget charges for a per-expert MoE adapter before reading it (issue 19 item 4).
    assert uniform_size(cfg, _header(t)) == _bytes(ut) > _bytes(t)
    scale = {"gate_proj": 6 / 4, "up_proj": 3 / 4, "down_proj": 6 / 2}
    for key in t:
        if ".lora_A." not in key:
            continue
        kb = key.replace("lora_A", "lora_B")
        s = next(v for p, v in scale.items() if f".{p}." in key)
        a, b, ua, ub = t[key], t[kb], ut[key], ut[kb]
        assert ua.shape[:-2] == a.shape[:-2] and ua.shape[-2] == 4 and ub.shape[-1] == 4 and ub.dtype == dtype
        assert torch.equal(ub[..., : b.shape[-1]], (b.float() * s).to(dtype))
        assert torch.equal(ua[..., : a.shape[-2], :], a) and not ua[..., a.shape[-2]:, :].any()
        assert not ub[..., b.shape[-1]:].any()
        assert_close((ub.float() @ ua.float()), s * (b.float() @ a.float()), dtype=dtype)


def test_rank_disagreeing_with_config_names_the_tensor():
    g = torch.Generator().manual_seed(4)
    key = "base_model.model.model.layers.0.self_attn.v_proj"
    t = {f"{key}.lora_A.weight": torch.randn(3, 16, generator=g),
         f"{key}.lora_B.weight": torch.randn(8, 3, generator=g)}
    cfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "rank_pattern": {"v_proj": 2}, "target_modules": ["v_proj"]}
    with pytest.raises(InvalidAdapter, match=rf"{key}\.lora_A\.weight \[3, 16\] .* do not match rank r=2"):
        uniform_lora(cfg, t, where="ad")


def _bytes(tensors: dict) -> int:
    return sum(t.numel() * t.element_size() for t in tensors.values())


def _header(tensors: dict) -> dict:
    """{key: (dtype, shape)} as read_safetensors_header gives it."""
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}
    return {k: (names[t.dtype], list(t.shape)) for k, t in tensors.items()}


@pytest.mark.parametrize("case", ["plain", *CASES])
def test_uniform_size_is_what_uniform_lora_holds(case, llama, tmp_path):
    """The host budget charges a read before it happens: from the safetensors header alone,
    uniform_size gives the bytes uniform_lora's output really holds."""
    lora = CASES.get(case, dict(r=4, lora_alpha=8))
    _, cfg, tensors = _adapter(llama, tmp_path / case, seed=5, target_modules=TARGETS, **lora)
    header = read_safetensors_header((tmp_path / case / "adapter_model.safetensors").read_bytes(), case)
    _, ut = uniform_lora(cfg, tensors)
    assert uniform_size(cfg, header) == _bytes(ut)
    if lora.get("rank_pattern"):  # padding really grew it past the file's tensors
        assert _bytes(ut) > _bytes(tensors)


def test_uniform_size_of_a_rank_pattern_padded_8x(llama, tmp_path):
    _, cfg, tensors = _adapter(llama, tmp_path / "x8", seed=6, target_modules=TARGETS, r=2, lora_alpha=4,
                               rank_pattern={"layers.0.self_attn.q_proj": 16})
    header = read_safetensors_header((tmp_path / "x8" / "adapter_model.safetensors").read_bytes(), "x8")
    q = sum(t.numel() * t.element_size() for k, t in tensors.items() if "layers.0.self_attn.q_proj" in k)
    assert uniform_size(cfg, header) == q + 8 * (_bytes(tensors) - q) == _bytes(uniform_lora(cfg, tensors)[1])
