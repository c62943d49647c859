"""SGLang reads packed adapters: ``LoRAAdapter.initialize_weights`` from one buffer (docs/packed.md).

Hooked (AROUND): when the adapter folder holds ``adapter.mintpack`` (adapters/folder_form.py), the header is
checked against the engine BEFORE the data is read, then one copy lands in a host
buffer and ``layer.weights`` are views into it, in the form SGLang's
``_normalize_weights`` would have produced. Any other folder takes SGLang's path.
Active with or without ``--enable-mint`` (stock SGLang cannot read such a folder at
all); errors are ValueErrors naming the file, which SGLang turns into a failed load.
The hook keeps no state outside the adapter, so it runs on any thread.
"""

from __future__ import annotations

import logging

from sglang_mint.packed import PackedError
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.folder_form import packed_file
from sglang_mint.packed.reader import check_against_base, read_header, read_packed

logger = logging.getLogger("sglang_mint")


def initialize_weights(original, adapter, *args, **kwargs):
    try:
        path = packed_file(adapter.config.path)
    except InvalidAdapter as exc:  # PEFT weights beside the packed file: either may be stale
        raise ValueError(str(exc)) from None
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
