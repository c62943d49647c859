"""Random-weight Llama models of a chosen size, for benchmarks that need real weight volume.

``write_random_llama(out, hidden=2048, intermediate=5632, layers=12)`` writes a
Llama checkpoint (one fp32 ``model.safetensors``, ``config.json``) with the tiny
BPE tokenizer of ``sglang_mint.dev.tiny`` and a vocabulary padded to ``vocab``
rows (ids past the tokenizer's 512 decode to ""). The weights are drawn directly
with ``torch.randn``, not through ``LlamaForCausalLM.__init__``, so a 2.6 GB model
is written in seconds. Everything is a pure function of the arguments.

    path = random_llama_dir(hidden=2048, intermediate=5632, layers=12)   # cached
    param_count(hidden=2048, intermediate=5632, layers=12, heads=16, kv_heads=4, vocab=32000)
      -> 672_188_416 parameters, 2.69 GB in fp32
"""

from __future__ import annotations

import json
from pathlib import Path

from sglang_mint.dev.tiny import CHAT_TEMPLATE, train_tokenizer


def _shapes(hidden: int, intermediate: int, layers: int, heads: int, kv_heads: int, vocab: int) -> dict:
    """HF Llama parameter names -> shapes (lm_head untied)."""
    head_dim = hidden // heads
    kv = kv_heads * head_dim
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,),
            p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (hidden, hidden),
            p + "self_attn.k_proj.weight": (kv, hidden),
            p + "self_attn.v_proj.weight": (kv, hidden),
            p + "self_attn.o_proj.weight": (hidden, hidden),
            p + "mlp.gate_proj.weight": (intermediate, hidden),
            p + "mlp.up_proj.weight": (intermediate, hidden),
            p + "mlp.down_proj.weight": (hidden, intermediate),
        })
    return shapes


def param_count(hidden: int, intermediate: int, layers: int, heads: int = 16, kv_heads: int = 4,
                vocab: int = 32000) -> int:
    total = 0
    for shape in _shapes(hidden, intermediate, layers, heads, kv_heads, vocab).values():
        n = 1
        for d in shape:
            n *= d
        total += n
    return total


def write_random_llama(out: str | Path, hidden: int = 2048, intermediate: int = 5632, layers: int = 12,
                       heads: int = 16, kv_heads: int = 4, vocab: int = 32000, seed: int = 0,
                       std: float = 0.02) -> Path:
    """Write a random fp32 Llama of the given shape with the tiny tokenizer; return ``out``.

    Linear and embedding weights are N(0, std^2), norm weights are 1.
    """
    import torch
    from safetensors.torch import save_file
    from transformers import LlamaConfig

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(seed)
    if vocab < len(tokenizer):
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer's {len(tokenizer)} tokens")
    config = LlamaConfig(
        architectures=["LlamaForCausalLM"],  # SGLang picks its model class from this
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=hidden // heads,
        max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        initializer_range=std, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, torch_dtype="float32",
    )
    gen = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in _shapes(hidden, intermediate, layers, heads, kv_heads, vocab).items():
        if len(shape) == 1:
            tensors[name] = torch.ones(shape, dtype=torch.float32)
        else:
            tensors[name] = torch.randn(shape, generator=gen, dtype=torch.float32) * std
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def random_llama_dir(cache_dir: str | Path | None = None, **shape) -> Path:
    """The cached model for ``shape`` (keyword arguments of write_random_llama), written once."""
    from sglang_mint.dev.cpu_env import default_cache_dir

    args = {"hidden": 2048, "intermediate": 5632, "layers": 12, "heads": 16, "kv_heads": 4, "vocab": 32000,
            "seed": 0, "std": 0.02, **shape}
    name = "random-llama-" + "-".join(f"{k}{v}" for k, v in args.items())
    path = Path(cache_dir or default_cache_dir()) / name
    done = path / ".complete"
    if not done.exists():
        import shutil

        shutil.rmtree(path, ignore_errors=True)
        write_random_llama(path, **args)
        done.write_text(json.dumps(args))
    return path
