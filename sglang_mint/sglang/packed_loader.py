"""SGLang reads packed adapters: ``LoRAAdapter.initialize_weights`` from one buffer.

Hooked (AROUND): ``sglang.srt.lora.lora.LoRAAdapter.initialize_weights`` (and, in
packed_pool.py, ``LoRAMemoryPool.load_lora_weight_to_buffer``). When the
adapter folder holds ``adapter.mintpack``, the header is checked against the
engine (rank = adapter_config r, base model identity, layer ids, expert counts)
BEFORE the data is read; then one copy of the data region lands in a host
buffer (pinned on CUDA machines, so SGLang's pool skips its own per-tensor
``pin_memory()``), and ``layer.weights`` are views into it, already in the form
SGLang's ``_normalize_weights`` would have produced (qkv/gate_up/fused_qkv_a
fused, experts 3D). Any other folder goes through SGLang's own path untouched.

Active with or without ``--enable-mint``: stock SGLang cannot read a folder
without adapter_model.safetensors, so only a failure becomes a load. Errors
are raised as ValueError naming the file; ``LoRAManager.load_lora_adapter``
turns them into a failed load reply and the server keeps serving.

Thread-safety: the hook keeps no state outside the adapter object, so it may
run on any thread (a cold-load scheduler calls initialize_weights off the
scheduler loop).
"""

from __future__ import annotations

import logging
import os


from sglang_mint.packed import PACKED_FILE, PackedError
from sglang_mint.packed.reader import read_header, read_packed

logger = logging.getLogger("sglang_mint")

def packed_path(folder: str) -> str | None:
    path = os.path.join(folder, PACKED_FILE)
    return path if os.path.isfile(path) else None


def initialize_weights(original, adapter, *args, **kwargs):
    path = packed_path(adapter.config.path)
    if path is None:
        return original(adapter, *args, **kwargs)
    try:
        load_packed_into(adapter, path)
    except PackedError as exc:
        raise ValueError(str(exc)) from None


def _engine_identity(hf_config) -> dict:
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    ident = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    for k in ("num_experts", "n_routed_experts", "num_local_experts"):
        if getattr(cfg, k, None):
            ident["num_experts"] = int(getattr(cfg, k))
            break
    return ident


def check_against_engine(path: str, mint: dict, entries, adapter) -> None:
    """Everything that can be checked before the data is read."""
    from sglang.srt.layers.utils import get_layer_id

    if int(mint["rank"]) != int(adapter.config.r):
        raise PackedError(f"{path}: packed rank {mint['rank']} but adapter_config.json says r={adapter.config.r}")
    engine = _engine_identity(adapter.base_hf_config)
    for key, want in (mint.get("base") or {}).items():
        have = engine.get(key)
        if key in engine and want is not None and have is not None and want != have:
            raise PackedError(f"{path}: packed for a different base model: {key}={want}, the engine has {have}")
    layers, experts = engine["num_hidden_layers"], engine.get("num_experts")
    for e in entries:
        lid = get_layer_id(e.name)
        if lid is not None and layers is not None and lid >= layers:
            raise PackedError(f"{path}: tensor {e.name} is for layer {lid}, the base model has {layers}")
        if ".experts." in e.name and len(e.shape) == 3 and experts and e.shape[0] not in (1, experts):
            raise PackedError(f"{path}: tensor {e.name} has {e.shape[0]} experts, the base model has {experts}")


def load_packed_into(adapter, path: str) -> None:
    from sglang.srt.layers.utils import get_layer_id

    _, entries, mint, _ = read_header(path)
    check_against_engine(path, mint, entries, adapter)
    packed = read_packed(path)
    for name, t in packed.tensors.items():
        lid = get_layer_id(name)
        if lid is not None:
            adapter.layers[lid].weights[name] = t
        elif "embed_tokens" in name or "lm_head" in name:
            adapter.embedding_layers[name] = t
        else:
            raise PackedError(f"{path}: tensor {name} belongs to no layer and is no embedding")
    # the views keep the buffer alive; keep the header for /mint/status-like introspection
    object.__setattr__(adapter, "mint_packed", {"path": path, "bytes": packed.nbytes, "rank": packed.rank})
    logger.info("loaded packed adapter %s from %s (%d bytes, one copy)", adapter.uid, path, packed.nbytes)
