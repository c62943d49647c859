"""Tiny random-weight models and PEFT adapters, built locally without a network.

``write_tiny_llama(out)`` writes a 2-layer, hidden-128 Llama with a BPE
tokenizer trained on a built-in corpus and a chat template;
``write_tiny_adapters(model, out, n)`` writes ``n`` PEFT LoRA adapters for it
whose B matrices are non-zero (PEFT initialises B to zero, which would make
every adapter a no-op). Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

TINY_LLAMA = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    max_position_embeddings=2048,
    rms_norm_eps=1e-5,
    rope_theta=10000.0,
    tie_word_embeddings=False,
    # A wider init than the default 0.02 gives peaked next-token distributions,
    # so an adapter visibly changes which token wins.
    initializer_range=0.08,
)

ATTN_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]
MLP_MODULES = ["gate_proj", "up_proj", "down_proj"]
ALL_MODULES = ATTN_MODULES + MLP_MODULES

# Adapter i uses ADAPTER_SHAPES[i % len]: ranks and target sets vary.
ADAPTER_SHAPES = [
    (8, ALL_MODULES),
    (4, ATTN_MODULES),
    (2, MLP_MODULES),
    (8, ["q_proj", "v_proj"]),
    (1, ALL_MODULES),
    (4, ["o_proj", "down_proj"]),
]

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] }}<|end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]

# The tokenizer's training corpus is made of these words (each one token, after a space);
# trained_adapters.py builds its prompts from them too.
CORPUS_WORDS = (
    "adapter base model serve token request batch layer rank expert kernel "
    "memory cache catalog revision publish rollback load cold warm fast slow "
    "the a an of to in on for with by from and or but if then else while "
    "red green blue small large quick lazy brown fox dog cat bird fish tree "
    "river mountain city road house book story song light dark night day "
    "one two three four five six seven eight nine ten hello world question answer"
).split()


def _corpus(seed: int, n_lines: int = 4000) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(CORPUS_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(n_lines)]


def train_tokenizer(seed: int = 0, vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a built-in corpus (no download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(seed), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        additional_special_tokens=SPECIAL_TOKENS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def write_tiny_llama(out: str | Path, seed: int = 0) -> Path:
    """Write a tiny random Llama (fp32 safetensors), its tokenizer and chat template."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tokenizer(seed)
    vocab = (len(tokenizer) + 63) // 64 * 64  # pad so the embedding shape is round
    config = LlamaConfig(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **TINY_LLAMA,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    # Some loaders read the template from its own file rather than the config.
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    return out


def adapter_name(i: int) -> str:
    return f"tiny-{i:04d}"


def write_tiny_adapters(
    model_dir: str | Path, out: str | Path, count: int, seed: int = 0, b_std: float = 0.05
) -> list[Path]:
    """Write ``count`` PEFT LoRA adapters for the model in ``model_dir``.

    Adapter ``i`` is ``out/tiny-000i`` with rank and target modules from
    ``ADAPTER_SHAPES``, A and B drawn from a generator seeded by (seed, i).
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        rank, targets = ADAPTER_SHAPES[i % len(ADAPTER_SHAPES)]
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        cfg = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(targets), lora_dropout=0.0)
        peft_model = get_peft_model(base, cfg)
        randomize_lora(peft_model, seed * 1_000_003 + i, b_std)
        path = out / adapter_name(i)
        peft_model.save_pretrained(path, safe_serialization=True)
        _pin_base_path(path, model_dir)
        paths.append(path)
    return paths


def randomize_lora(peft_model, seed: int, b_std: float) -> None:
    """Fill every LoRA A and B from a generator seeded by ``seed``: B non-zero, unlike PEFT's init."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(peft_model.named_parameters()):
            if ".lora_A." in name:
                param.copy_(torch.randn(param.shape, generator=gen) / param.shape[1] ** 0.5)
            elif ".lora_B." in name:
                param.copy_(torch.randn(param.shape, generator=gen) * b_std)


def _pin_base_path(adapter_dir: Path, model_dir: str | Path) -> None:
    """Record the base model's absolute path in adapter_config.json."""
    cfg_path = adapter_dir / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = str(Path(model_dir).resolve())
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
