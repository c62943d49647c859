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

from sglang_mint.packed import PackedError
from sglang_mint.packed.reader import check_against_base, packed_path, read_header, read_packed

logger = logging.getLogger("sglang_mint")


def initialize_weights(original, adapter, *args, **kwargs):
    path = packed_path(adapter.config.path)
    if path is None:
        return original(adapter, *args, **kwargs)
    try:
        load_packed_into(adapter, path)
    except PackedError as exc:
        raise ValueError(str(exc)) from None


def load_packed_into(adapter, path: str) -> None:
    from sglang.srt.layers.utils import get_layer_id

    _, entries, mint, _ = read_header(path)
    check_against_base(path, mint, entries, adapter.config.r, adapter.base_hf_config, get_layer_id)
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
