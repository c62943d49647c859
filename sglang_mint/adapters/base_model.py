"""Base model identity and the tensor shapes an adapter for it must have.

The catalog is created for one base model (a HuggingFace folder with
config.json). We record:

- ``name``: the folder name, for humans (``Llama-3.1-8B-Instruct``);
- ``identity``: ``<model_type>-<16 hex>`` where the hex is the sha256 of the
  shape-relevant config keys as canonical JSON, e.g. ``llama-3f2a...``. Two
  folders with the same architecture and sizes share an identity even when
  renamed or re-downloaded; a differently sized model never does;
- ``dims``: the sizes needed to check LoRA shapes of every module kind we
  serve: dense attention and MLP, MoE experts and shared experts, MLA
  attention and the DSA indexer (``module_shape``);
- ``moe_layers``: the layers whose MLP routes to experts, as SGLang builds
  them (``moe_layers_of``); the others have a dense MLP. DeepSeek-V3
  (first_k_dense_replace 3, 61 layers): 3..60.

For the tiny test model (hidden 128, intermediate 256, 4 heads, 2 kv heads,
head_dim 32) ``q_proj`` maps 128 -> 4*32 = 128, ``k_proj`` 128 -> 2*32 = 64,
``down_proj`` 256 -> 128, so a rank-r adapter has ``k_proj.lora_A`` [r, 128] and
``k_proj.lora_B`` [64, r]. For the tiny DeepSeek-V3 (hidden 64, 2 heads,
q_lora_rank 48, kv_lora_rank 256, qk_nope 16, qk_rope 32, v_head 16, experts of
width 32) ``kv_a_proj_with_mqa`` maps 64 -> 256+32, ``kv_b_proj`` 256 -> 2*(16+16),
``q_b_proj`` 48 -> 2*(16+32), ``o_proj`` 2*16 -> 64 and an expert's
``gate_proj`` 64 -> 32.

Catalogs store the BaseModel as JSON (``to_json``); fields added later have
defaults, so an old catalog opens; an adapter module whose widths need a field
it lacks is refused (its widths cannot be checked), other modules import as before.
``unrecorded`` names the fields such a record lacks, and the refusal then names
``mint catalog refresh-base``, which records them from the model's folder
(catalog/base_record.py). A record written since has every field, null where
the model has no such size (a dense model's ``moe_intermediate_size``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.module_paths import EXPERT_ALIASES
from sglang_mint.adapters.stack_fill import attention_outs

# Config keys that change any weight shape. Missing keys are simply left out.
SHAPE_KEYS = (
    "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads",
    "head_dim", "num_hidden_layers", "vocab_size", "tie_word_embeddings",
    # MoE and MLA models (the DSA indexer's index_n_heads/index_head_dim are left out: adding keys
    # would change the identity of existing catalogs' base models).
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
    # Recorded since every module kind's shapes are checked (older catalogs: None, such modules refused).
    moe_intermediate_size: int | None = None  # one routed expert's width (Mixtral: intermediate_size)
    shared_expert_intermediate_size: int | None = None  # the shared expert MLP (DeepSeek: moe * n_shared)
    q_lora_rank: int | None = None  # MLA; None also when the model has no q compression (plain q_proj)
    kv_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    index_n_heads: int | None = None  # DSA indexer (DeepSeek-V3.2)
    index_head_dim: int | None = None
    # The layers that route to experts (moe_layers_of); () for a dense model. None: unknown (a record
    # written before it was recorded, or an MoE architecture whose rule mint lacks), so not checked.
    moe_layers: tuple[int, ...] | None = None
    # The fields the stored JSON lacked (from_json): an older version of mint wrote it before they
    # existed. Not part of the record: to_json leaves it out, and == ignores it.
    unrecorded: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        del out["unrecorded"]
        if self.moe_layers is not None:
            out["moe_layers"] = list(self.moe_layers)
        return out

    @classmethod
    def from_json(cls, d: dict) -> "BaseModel":
        recorded = {f.name for f in fields(cls)} - {"unrecorded"}
        if isinstance(d.get("moe_layers"), list):
            d = {**d, "moe_layers": tuple(d["moe_layers"])}
        return cls(**d, unrecorded=tuple(sorted(recorded - set(d))))

    def unrecorded_widths(self) -> tuple[str, ...]:
        """The width fields (module_shape's) this record lacks: ``unrecorded`` less ``moe_layers``,
        which every record written before it lacks and which no width needs."""
        return tuple(f for f in self.unrecorded if f != "moe_layers")

    def routes_to_experts(self, layer: int) -> bool | None:
        """Whether ``layer``'s MLP is routed experts (``mlp.experts``, and a shared expert where the model has
        one) rather than a dense MLP (``mlp.gate_proj``...); None when the record does not say (moe_layers)."""
        return None if self.moe_layers is None else layer in self.moe_layers

    def packed_identity(self) -> dict:
        """What a packed file converted for this base records (``mint.base`` in format.py);
        the engine checks hidden_size, layers, vocab and experts against it before reading data.
        ``stack_outs`` are the output widths of the attention stack's members, which the converter
        gives the zeros of a member the adapter lacks (adapters/stack_fill.py); files written before
        it record ``kv_out`` instead (k_proj/v_proj's width), which nothing reads back.
        Example for the tiny Llama: ``{"name": "tiny", "identity": "llama-3f2a...", "hidden_size": 128,
        "num_hidden_layers": 2, "vocab_size": 1000, "stack_outs": {"q_proj": 128, "k_proj": 64, "v_proj": 64}}``."""
        out = {"name": self.name, "identity": self.identity, "hidden_size": self.hidden_size,
               "num_hidden_layers": self.num_hidden_layers}
        if self.vocab_size:
            out["vocab_size"] = self.vocab_size
        outs = attention_outs(self)
        if outs:
            out["stack_outs"] = outs
        if self.num_experts:
            out["num_experts"] = self.num_experts
        return out

    def module_shape(self, parent: str, module: str) -> tuple[int, int] | None:
        """(in_features, out_features) of a module, or None if we do not know it.

        ``parent`` is the path segment before the name, with an expert index
        dropped: ``self_attn``, ``mlp``, ``experts`` (``mlp.experts.3.gate_proj``
        and the 3D ``mlp.experts.gate_proj``), ``shared_expert``/``shared_experts``,
        ``indexer`` (``self_attn.indexer.wk``), ``""`` for ``lm_head`` (hidden ->
        vocab). Anything else, and any module whose sizes this BaseModel lacks
        (an old catalog), gives None: adapters/peft.py refuses such a module,
        as its widths cannot be checked (module_paths.py says why).
        """
        h = self.hidden_size
        if parent == "":
            return (h, self.vocab_size) if module == "lm_head" and self.vocab_size else None
        if parent == "self_attn":
            return self._mla_shape(module) if self.mla else self._attn_shape(module)
        if parent == "mlp":
            return _mlp_shape(module, h, self.intermediate_size)
        if parent == "experts":
            return _mlp_shape(EXPERT_ALIASES.get(module, module), h, self.moe_intermediate_size)
        if parent in ("shared_expert", "shared_experts"):
            return _mlp_shape(module, h, self.shared_expert_intermediate_size)
        if parent == "indexer" and self.index_n_heads and self.index_head_dim:
            n, d = self.index_n_heads, self.index_head_dim
            shapes = {"wk": (h, d), "weights_proj": (h, n)}
            if self.q_lora_rank:
                shapes["wq_b"] = (self.q_lora_rank, n * d)
            return shapes.get(module)
        return None

    def _attn_shape(self, module: str) -> tuple[int, int] | None:
        h = self.hidden_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "qkv_proj": (h, q + 2 * kv)}.get(module)

    def _mla_shape(self, module: str) -> tuple[int, int] | None:
        """DeepSeek MLA. Example (tiny DeepSeek-V3): kv_b_proj 256 -> 2 heads * (16 nope + 16 v) = 64."""
        h, n, kv_rank = self.hidden_size, self.num_attention_heads, self.kv_lora_rank
        nope, rope, v = self.qk_nope_head_dim, self.qk_rope_head_dim, self.v_head_dim
        if not (kv_rank and nope and rope and v):
            return None
        shapes = {"kv_a_proj_with_mqa": (h, kv_rank + rope), "kv_b_proj": (kv_rank, n * (nope + v)),
                  "o_proj": (n * v, h)}
        if self.q_lora_rank:
            shapes.update(q_a_proj=(h, self.q_lora_rank), q_b_proj=(self.q_lora_rank, n * (nope + rope)))
        else:
            shapes["q_proj"] = (h, n * (nope + rope))
        return shapes.get(module)


def _mlp_shape(module: str, hidden: int, width: int | None) -> tuple[int, int] | None:
    """gate/up: hidden -> width, down: width -> hidden, fused gate_up: hidden -> 2*width."""
    if not width:
        return None
    return {"gate_proj": (hidden, width), "up_proj": (hidden, width), "down_proj": (width, hidden),
            "gate_up_proj": (hidden, 2 * width)}.get(module)


# Which layers route to experts, as SGLang 0.5.23 builds the model it finds in architectures[0] (model_type
# for a config without it): every layer of Qwen2-MoE, Qwen3-MoE, Qwen3-Next and Mixtral (qwen2_moe.py,
# qwen3_moe.py and mixtral.py stage_facts: sparse=True; qwen3_next.py is_layer_sparse = True; mlp_only_layers
# and decoder_sparse_step are not read, and a dense weight of such a layer is skipped at load); DeepSeek's by
# deepseek_v2.py _is_layer_sparse, Llama-4's by llama4.py _is_moe_layer (below).
EVERY_LAYER = {"Qwen2MoeForCausalLM", "Qwen3MoeForCausalLM", "Qwen3NextForCausalLM", "MixtralForCausalLM",
               "qwen2_moe", "qwen3_moe", "qwen3_next", "mixtral"}
DEEPSEEK = {"DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM",
            "deepseek_v2", "deepseek_v3", "deepseek_v32"}
GLM4_MOE = {"Glm4MoeForCausalLM", "glm4_moe"}  # glm4_moe.py _is_layer_sparse: l >= first_k_dense_replace
# mllama4.py (the multimodal model, text model under text_config) and llama4.py (a text-only export)
LLAMA4 = {"Llama4ForConditionalGeneration", "Llama4ForCausalLM", "llama4", "llama4_text"}


def moe_layers_of(config: dict, cfg: dict, layers: int, experts: int | None) -> tuple[int, ...] | None:
    """The layers of the model that route to experts: () for a dense model, None when unknown.

    ``config`` is config.json, ``cfg`` its text part. DeepSeek (deepseek_v2.py ``_is_layer_sparse``): layer
    l when ``l >= first_k_dense_replace and l % moe_layer_freq == 0``, e.g. DeepSeek-V3 (3, 1): 3..60.
    Without first_k_dense_replace SGLang takes the transformers config class's default (3 for V3, 0 for V2),
    so it is unknown here; without moe_layer_freq it is 1, the value of every DeepSeek config (SGLang
    requires the key; transformers 5 does not write it). Llama-4 (llama4.py ``_is_moe_layer``): layer l when
    ``(l + 1) % interleave_moe_layer_step == 0``, every layer for a step of 0; without the key, 1 (the only
    default, Llama4TextConfig's); its ``moe_layers`` key is not read. Maverick (step 2, 48 layers): 1, 3, ..., 47.
    An MoE architecture not named above: unknown."""
    if not experts:
        return ()
    archs = config.get("architectures")
    kind = archs[0] if isinstance(archs, list) and archs else config.get("model_type") or cfg.get("model_type")
    if kind in EVERY_LAYER:
        return tuple(range(layers))
    if kind in LLAMA4:
        step = cfg.get("interleave_moe_layer_step", 1)
        if not _count(step):
            return None
        return tuple(range(layers)) if step == 0 else tuple(range(step - 1, layers, step))
    first, freq = cfg.get("first_k_dense_replace"), 1 if kind in GLM4_MOE else cfg.get("moe_layer_freq", 1)
    if kind not in DEEPSEEK | GLM4_MOE or not _count(first) or not _count(freq) or freq == 0:
        return None
    return tuple(n for n in range(first, layers) if n % freq == 0)


def _count(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def _positive(v) -> bool:
    return _count(v) and v > 0


def text_part(config: dict, where: str) -> tuple[dict, str]:
    """config.json's text model and the prefix that names its keys: ``(config["text_config"], "text_config.")``
    for a multimodal config (Llama-4, Gemma-3, Mistral-3), else ``(config, "")``. ``where`` names the file."""
    text = config.get("text_config")
    if not text:  # absent, null or {}: the sizes are the file's own
        return config, ""
    if not isinstance(text, dict):
        raise InvalidAdapter(f"base model config {where}: text_config is a {type(text).__name__}, not a JSON object")
    return text, "text_config."


def base_model_from_config(config: dict, name: str, where: str = "config.json") -> BaseModel:
    """Build the identity and dims from a parsed config.json (``text_config`` is used if present).

    ``where`` names the file in a refusal, which names each key that is missing or no positive integer:
    ``base model config /models/gemma-3-4b-it/config.json: text_config.num_attention_heads is missing``."""
    cfg, prefix = text_part(config, where)
    model_type = str(config.get("model_type") or cfg.get("model_type") or "unknown")
    need = ("hidden_size", "num_attention_heads", "num_hidden_layers")
    wrong = [f"{prefix}{k} is missing" if k not in cfg else f"{prefix}{k} is {json.dumps(cfg[k])}, not a positive "
             "integer" for k in need if not _positive(cfg.get(k))]
    if wrong:
        hint = " (mint reads each size from this file, not from a transformers class's defaults)" if any(
            w.endswith("missing") for w in wrong) else ""
        raise InvalidAdapter(f"base model config {where}: {'; '.join(wrong)}{hint}")
    h, heads = cfg["hidden_size"], cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or h // heads
    shape = {k: cfg[k] for k in SHAPE_KEYS if k in cfg}
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def size(key: str) -> int | None:
        v = cfg.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None

    experts = next((size(k) for k in ("num_experts", "n_routed_experts", "num_local_experts") if size(k)), None)
    # An expert's width: moe_intermediate_size, else (Mixtral) intermediate_size, as SGLang reads it.
    moe = size("moe_intermediate_size") or (size("intermediate_size") if experts else None)
    # Qwen2-MoE names the shared expert's width; DeepSeek has n_shared_experts experts fused into one MLP.
    shared = size("shared_expert_intermediate_size") or (
        size("moe_intermediate_size") * size("n_shared_experts")
        if size("moe_intermediate_size") and size("n_shared_experts") else None)
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
        num_experts=experts,
        moe_intermediate_size=moe,
        shared_expert_intermediate_size=shared,
        q_lora_rank=size("q_lora_rank"),
        kv_lora_rank=size("kv_lora_rank"),
        qk_nope_head_dim=size("qk_nope_head_dim"),
        qk_rope_head_dim=size("qk_rope_head_dim"),
        v_head_dim=size("v_head_dim"),
        index_n_heads=size("index_n_heads"),
        index_head_dim=size("index_head_dim"),
        moe_layers=moe_layers_of(config, cfg, cfg["num_hidden_layers"], experts),
    )


def read_config(path: str) -> dict:
    """A config.json as a dict; refusals name the file. The bytes are parsed (``json.loads`` finds UTF-8 with
    or without a BOM, UTF-16 and UTF-32), so the result does not depend on the locale's encoding."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise InvalidAdapter(f"base model config {path} does not exist") from None
    except OSError as exc:
        raise InvalidAdapter(f"base model config {path} is unreadable: {exc}") from None
    try:
        config = json.loads(data)
    except ValueError as exc:  # UnicodeDecodeError too
        raise InvalidAdapter(f"base model config {path} is not JSON ({exc})") from None
    if not isinstance(config, dict):
        raise InvalidAdapter(f"base model config {path} is not a JSON object")
    return config


def read_base_model(model_dir: str) -> tuple[BaseModel, dict]:
    """The base model in ``model_dir`` and its config.json's text part (``text_part``): the one reader of a base
    model's folder, for the catalog (``load_base_model``) and ``mint pack --base`` (packed/convert.py)."""
    path = os.path.join(model_dir, "config.json")
    config = read_config(path)
    base = base_model_from_config(config, os.path.basename(os.path.normpath(model_dir)), path)
    return base, text_part(config, path)[0]


def load_base_model(model_dir: str) -> BaseModel:
    """Read ``model_dir/config.json``; errors name the file and the problem."""
    return read_base_model(model_dir)[0]
