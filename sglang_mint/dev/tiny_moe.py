"""Tiny random-weight MoE models and expert-LoRA adapters, built locally without a network.

``write_tiny_moe(out, family)`` writes a 2-layer Qwen3-MoE (8 experts, top-2)
or DeepSeek-V3 (MLA + 8 routed experts top-2 + 1 shared expert) with the
tokenizer of ``tiny.py``. The DeepSeek config carries what SGLang's CPU path
needs (shared/cpu-sglang.md): ``moe_layer_freq``, ``topk_method`` and
``scoring_func`` (transformers 5 does not write them), RoPE of type ``yarn``
with factor 1.0 (plain RoPE through SGLang's ``deepseek_yarn`` factory), and
``kv_lora_rank + qk_rope_head_dim = 288`` (the widths SGLang's Triton MLA decode
kernel accepts).

``write_tiny_moe_adapters(model, out)`` writes ONE expert-LoRA adapter in
three on-disk forms, all the same weights:

* ``peft-fused``: written by PEFT 0.21 itself (``target_modules`` with
  gate/up/down_proj on a transformers-5 MoE becomes fused-expert parameters
  ``...mlp.experts.base_layer.lora_A.weight``): the form today's PEFT trains
  and the HF+PEFT reference loads. Stock SGLang cannot read it; ``mint pack``
  output of it is what the server loads.
* ``per-expert``: ``...mlp.experts.<e>.{gate,up,down}_proj.lora_{A,B}.weight``
  ``[r, in]`` / ``[out, r]``.
* ``packed3d``: ``...mlp.experts.{gate,up,down}_proj.lora_{A,B}.weight``
  ``[E, r, in]`` / ``[E, out, r]``.

PEFT's fused ``gate_up_proj`` has one A (rank 2r) for both halves, so in the
per-expert and 3D forms gate and up share it, and every module is zero-padded
to rank 2r with the same alpha/r: exact.
Attention targets (and for DeepSeek the shared expert, if PEFT keeps it) are
copied unchanged. B is non-zero (PEFT initialises it to zero). Everything is
a pure function of the seed.
"""

from __future__ import annotations

import json
from pathlib import Path

from sglang_mint.dev.tiny import CHAT_TEMPLATE, _pin_base_path, randomize_lora, train_tokenizer

FAMILIES = ("qwen3-moe", "deepseek-v3")
EXPERTS, TOP_K = 8, 2

TINY_QWEN3_MOE = dict(
    hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, num_experts=EXPERTS,
    num_experts_per_tok=TOP_K, mlp_only_layers=[], decoder_sparse_step=1, norm_topk_prob=True,
    max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
    initializer_range=0.08,  # peaked next-token distributions, as tiny.py
)

TINY_DEEPSEEK_V3 = dict(
    hidden_size=64, intermediate_size=128, moe_intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2,
    q_lora_rank=48, kv_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=16, v_head_dim=16,
    n_routed_experts=EXPERTS, num_experts_per_tok=TOP_K, n_shared_experts=1, n_group=1, topk_group=1,
    first_k_dense_replace=0, norm_topk_prob=True, routed_scaling_factor=1.0,
    max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False, initializer_range=0.08,
    rope_interleave=True,
)
# Keys SGLang's DeepSeek loader reads and transformers 5 does not write.
DEEPSEEK_EXTRA = dict(moe_layer_freq=1, topk_method="noaux_tc", scoring_func="sigmoid", num_nextn_predict_layers=0)
# yarn with factor 1.0 is plain RoPE; SGLang's CPU rope factory only has deepseek_yarn.
DEEPSEEK_ROPE = dict(rope_type="yarn", factor=1.0, original_max_position_embeddings=2048, rope_theta=10000.0,
                     beta_fast=32, beta_slow=1, mscale=1.0, mscale_all_dim=1.0)

ATTN_TARGETS = {
    "qwen3-moe": ["q_proj", "k_proj", "v_proj", "o_proj"],
    "deepseek-v3": ["q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj"],
}
EXPERT_TARGETS = ["gate_proj", "up_proj", "down_proj"]
FORMS = ("peft-fused", "per-expert", "packed3d")


def family_of(model_dir: str | Path) -> str:
    model_type = json.loads((Path(model_dir) / "config.json").read_text())["model_type"]
    return {"qwen3_moe": "qwen3-moe", "deepseek_v3": "deepseek-v3"}[model_type]


def write_tiny_moe(out: str | Path, family: str = "qwen3-moe", seed: int = 0, **config) -> Path:
    """Write a tiny random MoE model (fp32 safetensors) of ``family`` with tokenizer and chat template.

    ``config`` overrides the family's tiny config, e.g. ``num_experts=128, num_hidden_layers=8``
    for a Qwen3-MoE whose per-expert adapters have thousands of tensors."""
    import torch

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(seed)
    ids = dict(vocab_size=(len(tokenizer) + 63) // 64 * 64, bos_token_id=tokenizer.bos_token_id,
               eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(seed)
    if family == "qwen3-moe":
        from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

        model = Qwen3MoeForCausalLM(Qwen3MoeConfig(**ids, **{**TINY_QWEN3_MOE, **config}))
    else:
        from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

        model = DeepseekV3ForCausalLM(DeepseekV3Config(**ids, **{**TINY_DEEPSEEK_V3, **config},
                                                       rope_parameters=dict(DEEPSEEK_ROPE)))
        with torch.no_grad():  # noaux_tc routing bias: non-zero, so SGLang must read it
            gen = torch.Generator().manual_seed(seed + 1)
            for layer in model.model.layers:
                if not hasattr(layer.mlp, "gate"):  # a dense layer (first_k_dense_replace) has no router
                    continue
                bias = layer.mlp.gate.e_score_correction_bias
                bias.copy_(torch.randn(bias.shape, generator=gen) * 0.05)
    model.to(torch.float32).save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    if family == "deepseek-v3":
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(DEEPSEEK_EXTRA)
        cfg["rope_scaling"] = dict(DEEPSEEK_ROPE)  # the key SGLang's DeepSeek code reads
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    return out


def write_tiny_moe_adapters(model_dir: str | Path, out: str | Path, seed: int = 0, rank: int = 4,
                            b_std: float = 0.2) -> dict[str, Path]:
    """Write one expert-LoRA adapter in every form of ``FORMS``; returns {form: folder}."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    family = family_of(model_dir)
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    cfg = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                     target_modules=ATTN_TARGETS[family] + EXPERT_TARGETS)
    peft_model = get_peft_model(base, cfg)
    randomize_lora(peft_model, seed * 1_000_003 + 7, b_std)
    fused = out / "peft-fused"
    peft_model.save_pretrained(fused, safe_serialization=True)
    _pin_base_path(fused, model_dir)
    return {"peft-fused": fused, **{form: _write_unfused(fused, out / form, form, model_dir)
                                    for form in ("per-expert", "packed3d")}}


def _write_unfused(fused: Path, dst: Path, form: str, model_dir) -> Path:
    """PEFT's fused experts rewritten as per-expert 2D or 3D tensors (the converter reads the nesting).

    PEFT gives the fused gate_up_proj rank 2r (``rank_pattern``) and the rest
    rank r; one adapter rank R = 2r is what SGLang reads, so every module is
    zero-padded to R (extra A rows and B columns are zero: exact) and
    ``lora_alpha = scaling * R``.
    """
    import torch
    from safetensors.torch import save_file

    from sglang_mint.packed.convert import CONFIG, WEIGHTS, _member_views, _members, read_peft

    cfg, tensors = read_peft(str(fused))
    members, scaling = _members(cfg, tensors, str(fused))
    R = max(m.rank for m in members.values())
    leaf = {("gate_up_proj", 0): "gate_proj", ("gate_up_proj", 1): "up_proj", ("down_proj", 0): "down_proj"}

    def pad(t: torch.Tensor, ab: str) -> torch.Tensor:  # A [.., r, in] -> [.., R, in]; B [.., out, r] -> [.., out, R]
        dim = -2 if ab == "A" else -1
        shape = list(t.shape)
        shape[dim] = R
        out = torch.zeros(shape, dtype=t.dtype)
        out.narrow(dim, 0, t.shape[dim]).copy_(t)
        return out

    out: dict = {}
    for mem in members.values():
        if not mem.layout.startswith("peft"):  # attention (and any dense module): unchanged but padded
            for ab, key in mem.src.items():
                out[key] = pad(tensors[key], ab)
            continue
        parent, fused_name = mem.stored.rsplit(".", 1)
        proj = leaf[(fused_name, mem.slot)]
        for ab, t in zip("AB", _member_views(mem)):
            t = pad(t, ab)
            if form == "packed3d":
                out[f"{parent}.{proj}.lora_{ab}.weight"] = t
            else:
                for e in range(t.shape[0]):
                    out[f"{parent}.{e}.{proj}.lora_{ab}.weight"] = t[e].clone()
    dst.mkdir(parents=True, exist_ok=True)
    save_file(out, str(dst / WEIGHTS))
    new_cfg = {k: v for k, v in cfg.items() if k not in ("target_parameters", "rank_pattern", "alpha_pattern")}
    new_cfg.update(r=R, lora_alpha=scaling * R,
                   target_modules=sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in out}))
    (dst / CONFIG).write_text(json.dumps(new_cfg, indent=2, sort_keys=True))
    _pin_base_path(dst, model_dir)
    return dst
