"""What a base model's weights and one LoRA adapter for it weigh, read off its config.json.

Every linear module of every layer, with ``BaseModel.module_shape`` giving (in, out):

- attention: ``q_proj k_proj v_proj o_proj``; under MLA (DeepSeek) ``q_a_proj q_b_proj``
  (``q_proj`` without q compression) ``kv_a_proj_with_mqa kv_b_proj o_proj``;
- MLP: ``gate_proj up_proj down_proj``. An MoE layer has one set per routed expert at the
  expert's width, plus the shared expert's set, and a router (weights only). Which layers are
  MoE: the base record's ``moe_layers``, as SGLang builds the model (``BaseModel.routes_to_experts``:
  DeepSeek-V3's first 3 layers are dense); every layer of an MoE model whose rule mint lacks.

A target name means what PEFT's ``target_modules`` suffix match means on the HuggingFace
modules: ``gate_proj`` is the dense MLP's, every routed expert's and the shared expert's.
An adapter of rank r on a module (in, out) holds A [r, in] and B [out, r].

Example, Llama-3-8B (hidden 4096, intermediate 14336, 8 kv heads of 128), rank 16 on all seven
modules: one layer holds (4096+4096) + 2 x (4096+1024) + (4096+4096) + 3 x (4096+14336) = 81,920
in+out values per unit of rank, so 16 x 32 layers x 81,920 x 2 bytes = 83,886,080 bytes (80 MiB).

In host memory SGLang holds q/k/v as one fused pair of tensors and gate/up as another (an MoE
layer's experts stacked, one tensor per module), so the tiny Llama's adapter on all seven
modules holds 8 tensors per layer; ``residency/host_bytes.py:held_host_bytes`` adds their
objects: measured, 64 rank-4 tiny adapters held 4,718,592 bytes, 73,728 each (parallel_bench).
Until it is built, a read is charged the engine's estimate from the catalog's record
(``read_estimate_bytes``: the file's 28 tensors, unfused), 87,808 bytes for that adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_mint.adapters.base_model import BaseModel
from sglang_mint.errors import MintError
from sglang_mint.residency.host_bytes import held_host_bytes, read_estimate_bytes

ATTENTION = ("q_proj", "k_proj", "v_proj", "o_proj")
MLA_ATTENTION = ("q_a_proj", "q_b_proj", "q_proj", "kv_a_proj_with_mqa", "kv_b_proj", "o_proj")
MLP = ("gate_proj", "up_proj", "down_proj")
TARGET_GROUPS = {"attention": ATTENTION + MLA_ATTENTION, "mlp": MLP, "all": ATTENTION + MLA_ATTENTION + MLP}
# Modules SGLang holds as one pair of tensors (A and B) per layer.
FUSED = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "gate_proj": "gate_up", "up_proj": "gate_up"}


@dataclass(frozen=True)
class Linear:
    """One kind of linear module in one layer: ``count`` copies (experts) of (in, out)."""
    parent: str  # self_attn, mlp, experts, shared_experts, router
    module: str
    fan_in: int
    fan_out: int
    count: int = 1


@dataclass(frozen=True)
class AdapterSize:
    """One adapter of ``rank`` on ``targets``: what it holds and what it costs to move."""
    rank: int
    targets: tuple[str, ...]
    values: int  # A and B elements over every layer
    file_bytes: int  # read from disk or S3 (tensor data; the safetensors header is left out)
    host_bytes: int  # charged to --mint-host-cache-bytes once loaded (held_host_bytes)
    reserve_bytes: int  # charged while its read is under way: the engine's estimate from the catalog's record
    gpu_bytes: int  # one slot of SGLang's LoRA pool, all GPUs of the engine together


def layer_linears(base: BaseModel, layer: int) -> list[Linear]:
    """The linear modules of one layer. Example (Llama-3-8B): q 4096->4096, k and v 4096->1024,
    o 4096->4096, gate and up 4096->14336, down 14336->4096."""
    out = []
    for module in (MLA_ATTENTION if base.mla else ATTENTION):
        shape = base.module_shape("self_attn", module)
        if shape:
            out.append(Linear("self_attn", module, *shape))
    moe = base.routes_to_experts(layer)
    if moe or (moe is None and base.num_experts):
        for module in MLP:
            out.append(Linear("experts", module, *base.module_shape("experts", module), count=base.num_experts))
            shared = base.module_shape("shared_experts", module)
            if shared:
                out.append(Linear("shared_experts", module, *shared))
        out.append(Linear("router", "gate", base.hidden_size, base.num_experts))
    else:
        out += [Linear("mlp", module, *base.module_shape("mlp", module)) for module in MLP]
    return out


def weight_bytes(config: dict, base: BaseModel, bytes_per_param: float) -> int:
    """The base model's weights: every layer's linear modules plus the embedding and (untied) head."""
    params = sum(m.fan_in * m.fan_out * m.count
                 for layer in range(base.num_hidden_layers) for m in layer_linears(base, layer))
    vocab = base.vocab_size or 0
    params += vocab * base.hidden_size * (1 if config.get("tie_word_embeddings") else 2)
    return int(params * bytes_per_param)


def resolve_targets(base: BaseModel, names: list[str]) -> tuple[str, ...]:
    """``["all"]`` -> the model's attention and MLP modules; unknown names are an error naming them."""
    have = list(dict.fromkeys(m.module for layer in range(base.num_hidden_layers)  # in the model's order
                              for m in layer_linears(base, layer) if m.parent != "router"))
    wanted = set()
    for name in names:
        if name not in TARGET_GROUPS and name not in have:
            raise MintError(f"target {name!r} is not a module of {base.name}; it has {', '.join(have)} "
                            f"(or give {', '.join(TARGET_GROUPS)})")
        wanted.update(TARGET_GROUPS.get(name, (name,)))
    return tuple(m for m in have if m in wanted)


def adapter_size(base: BaseModel, rank: int, targets: tuple[str, ...],
                 adapter_bytes_per_value: int, pool_bytes_per_value: int) -> AdapterSize:
    """The sizes of one adapter of ``rank`` on ``targets`` (resolved names) for this base model."""
    if rank <= 0:
        raise MintError(f"rank must be positive, got {rank}")
    values = held = in_file = 0
    for layer in range(base.num_hidden_layers):
        pairs = set()
        for m in layer_linears(base, layer):
            if m.module in targets and m.parent != "router":
                values += rank * (m.fan_in + m.fan_out) * m.count
                pairs.add((m.parent, FUSED.get(m.module, m.module)))
                in_file += 2 * m.count
        held += 2 * len(pairs)
    data = values * adapter_bytes_per_value
    return AdapterSize(rank, targets, values, data, held_host_bytes(held, [data]),
                       read_estimate_bytes(data, data, in_file), values * pool_bytes_per_value)
