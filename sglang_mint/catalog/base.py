"""Base model identity and the tensor shapes an adapter for it must have.

The catalog is created for one base model (a HuggingFace folder with
config.json). We record:

- ``name``: the folder name, for humans (``Llama-3.1-8B-Instruct``);
- ``identity``: ``<model_type>-<16 hex>`` where the hex is the sha256 of the
  shape-relevant config keys as canonical JSON, e.g. ``llama-3f2a...``. Two
  folders with the same architecture and sizes share an identity even when
  renamed or re-downloaded; a differently sized model never does;
- ``dims``: the sizes needed to check LoRA shapes of the dense modules.

For the tiny test model (hidden 128, intermediate 256, 4 heads, 2 kv heads,
head_dim 32) ``q_proj`` maps 128 -> 4*32 = 128, ``k_proj`` 128 -> 2*32 = 64,
``down_proj`` 256 -> 128, so a rank-r adapter has ``k_proj.lora_A`` [r, 128] and
``k_proj.lora_B`` [64, r].
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass

from sglang_mint.catalog.errors import InvalidAdapter

# Config keys that change any weight shape. Missing keys are simply left out.
SHAPE_KEYS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "head_dim", "num_hidden_layers", "vocab_size", "tie_word_embeddings",
    # MoE and MLA models: we do not check their module shapes, but they are part of the identity.
    "num_experts", "num_local_experts", "n_routed_experts", "n_shared_experts",
    "moe_intermediate_size", "shared_expert_intermediate_size",
    "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
)

DENSE_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class BaseModel:
    name: str
    model_type: str
    identity: str
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_hidden_layers: int
    mla: bool = False  # DeepSeek-style attention: q/k/v shapes are not the dense ones
    # Recorded for packed revisions (catalogs made before they existed lack them: None).
    vocab_size: int | None = None
    num_experts: int | None = None  # routed experts of an MoE model

    def to_json(self) -> dict:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, d: dict) -> "BaseModel":
        return cls(**d)

    def packed_identity(self) -> dict:
        """What a packed file converted for this base records (``mint.base`` in format.py);
        the engine checks hidden_size, layers, vocab and experts against it before reading data.
        Example for the tiny Llama: ``{"name": "tiny", "identity": "llama-3f2a...",
        "hidden_size": 128, "num_hidden_layers": 2, "vocab_size": 1000, "kv_out": 64}``."""
        out = {"name": self.name, "identity": self.identity, "hidden_size": self.hidden_size,
               "num_hidden_layers": self.num_hidden_layers}
        if self.vocab_size:
            out["vocab_size"] = self.vocab_size
        if not self.mla:  # k_proj/v_proj width, to zero-fill them under a q_proj-only adapter
            out["kv_out"] = self.num_key_value_heads * self.head_dim
        if self.num_experts:
            out["num_experts"] = self.num_experts
        return out

    def module_shape(self, parent: str, module: str) -> tuple[int, int] | None:
        """(in_features, out_features) of a dense module, or None if we do not know it.

        ``parent`` is the module path segment before the name: ``self_attn`` or
        ``mlp`` for dense Llama/Qwen layers; ``experts.3``, ``shared_expert`` and
        anything else return None (only rank consistency is checked there).
        """
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        if parent == "self_attn" and not self.mla:
            return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h)}.get(module)
        if parent == "mlp":
            return {"gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}.get(module)
        return None


def base_model_from_config(config: dict, name: str) -> BaseModel:
    """Build the identity and dims from a parsed config.json (``text_config`` is used if present)."""
    cfg = config.get("text_config") or config
    model_type = str(config.get("model_type") or cfg.get("model_type") or "unknown")
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers")
    missing = [k for k in need if not isinstance(cfg.get(k), int)]
    if missing:
        raise InvalidAdapter(f"base model {name!r}: config.json lacks integer {', '.join(missing)}")
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    shape = {k: cfg[k] for k in SHAPE_KEYS if k in cfg}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]
    return BaseModel(
        name=name,
        model_type=model_type,
        identity=f"{model_type}-{digest}",
        hidden_size=h,
        intermediate_size=int(cfg.get("intermediate_size") or 4 * h),
        num_attention_heads=heads,
        num_key_value_heads=int(cfg.get("num_key_value_heads") or heads),
        head_dim=int(head_dim),
        num_hidden_layers=cfg["num_hidden_layers"],
        mla=bool(cfg.get("kv_lora_rank")),
        vocab_size=cfg.get("vocab_size") if isinstance(cfg.get("vocab_size"), int) else None,
        num_experts=next((int(cfg[k]) for k in ("num_experts", "n_routed_experts", "num_local_experts")
                          if isinstance(cfg.get(k), int) and cfg[k] > 0), None),
    )


def load_base_model(model_dir: str) -> BaseModel:
    """Read ``model_dir/config.json``; errors name the folder and the problem."""
    path = os.path.join(model_dir, "config.json")
    try:
        with open(path, "rb") as f:
            config = json.loads(f.read())
    except FileNotFoundError:
        raise InvalidAdapter(f"base model folder {model_dir!r} has no config.json") from None
    except (OSError, ValueError) as exc:
        raise InvalidAdapter(f"base model config {path!r} is unreadable: {exc}") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"base model config {path!r} is not a JSON object")
    return base_model_from_config(config, os.path.basename(os.path.normpath(model_dir)))
