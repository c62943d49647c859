"""A catalog revision -> SGLang's ``LoRAAdapter``, built on a cold-load worker thread (docs/architecture.md, step 5).

``read_adapter`` reads and checks the revision's files (adapters/peft.py) and builds
the adapter; ``attach_adapter`` maps the copy tensor-parallel rank 0 read
(residency/node_share.py). Both return ``(LoRAAdapter, host bytes)`` for residency.py.
"""

from __future__ import annotations

import os

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import load_for_serving, read_served_config
from sglang_mint.residency.host_bytes import adapter_host_bytes


def read_adapter(manager, catalog, lora_id: str, rev):
    """Build revision ``rev`` (the catalog's record) for SGLang's LoRA ``manager``."""
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig

    from sglang_mint.packed.reader import packed_path

    # A revision published with durable=false is read from its staged folder in shared memory
    # (frontend/staged_revisions.py) until that goes, a while after its blobs are stored.
    staged = bool(rev.staged) and os.path.isdir(rev.staged)
    path = rev.staged if staged else str(catalog.local_path(rev))
    where = f"adapter {rev.adapter_id!r} revision {rev.revision}"
    # The config is read here, not by LoRAConfig(path): one an older version stored without lora_alpha
    # is served with PEFT's (peft.read_served_config). A revision holds only upload.ACCEPTED files, so
    # there is no added_tokens.json for SGLang to read next to it.
    config = LoRAConfig(path, config_dict=read_served_config(path, where), added_tokens_config=None,
                        base_vocab_size=manager.base_hf_config.vocab_size)
    tensors = None
    if packed_path(path) is None:
        # A staged file is in shared memory: mapped, not copied (peft.map_safetensors).
        uniform_config, tensors = load_for_serving(path, config.hf_config, catalog.base, where, mapped=staged)
        if uniform_config is not config.hf_config:
            config.hf_config = uniform_config
            config.r, config.lora_alpha = uniform_config["r"], uniform_config["lora_alpha"]
    if config.use_dora:
        raise ValueError("DoRA adapters are not supported")
    if not manager.memory_pool.can_support(config):
        raise ValueError(
            f"rank {config.r} or target modules {sorted(config.target_modules)} do not fit the server's "
            "LoRA pool (--max-lora-rank, --lora-target-modules)"
        )
    adapter = LoRAAdapter(lora_id, config, manager.base_hf_config, manager.load_config, manager.lora_backend,
                          base_model=manager.base_model)
    if tensors is None:
        adapter.initialize_weights()  # the packed reader (packed_loader.py): one read, one copy
    else:
        # One read (above) that releases the GIL. SGLang's initialize_weights goes through
        # its model-weight iterator, which starts a thread pool per file: each handoff
        # then waits out the busy scheduler loop's GIL slice (tens of ms per tiny adapter).
        adapter.initialize_weights_from_tensors(tensors)
        if staged:
            own_weights(adapter, tensors)
    unfiled = unfiled_weights(adapter, manager.memory_pool.target_modules)
    if unfiled:
        raise InvalidAdapter(f"{where}: SGLang's LoRA pool has no module for {', '.join(unfiled[:3])}"
                             f"{f' and {len(unfiled) - 3} more' if len(unfiled) > 3 else ''} (its modules: "
                             f"{', '.join(sorted(manager.memory_pool.target_modules))})")
    return adapter, adapter_host_bytes(adapter)


def unfiled_weights(adapter, target_modules) -> list[str]:
    """The weights of ``adapter`` SGLang's pool cannot file under one of ``target_modules``, as its fill
    looks each up (lora.utils.get_target_module_name). The fill runs on the scheduler's loop as a batch
    is formed, and a name it cannot file raises there and stops the server for every tenant: found
    here, on the read thread, it fails this adapter's requests alone. The catalog refuses the forms
    known to do this (q_proj of DeepSeek-V2-Lite, PEFT's fused experts unpacked); this catches the rest."""
    from sglang.srt.lora.utils import get_target_module_name

    unfiled = []
    for name in (name for layer in adapter.layers for name in layer.weights):  # embeddings: only logged there
        try:
            get_target_module_name(name, target_modules)
        except ValueError:
            unfiled.append(name)
    return unfiled


def own_weights(adapter, read: dict) -> None:
    """Copy each weight of ``adapter`` that is still a view of the ``read`` tensors' storage (what
    SGLang did not stack, about a third of a dense adapter), so that the mapping they view goes
    with ``read`` and the adapter holds what a read would have given it, no more."""
    mapped = {t.untyped_storage().data_ptr() for t in read.values()}
    for layer in adapter.layers:
        for name, t in layer.weights.items():
            if t.untyped_storage().data_ptr() in mapped:
                layer.weights[name] = t.clone()


def attach_adapter(manager, share, lora_id: str, seq: int):
    """Map the adapter tensor-parallel rank 0 read as read number ``seq`` (residency/node_share.py)."""
    from sglang.srt.lora.lora import LoRAAdapter

    adapter = share.attach(seq, lambda config: LoRAAdapter(
        lora_id, config, manager.base_hf_config, manager.load_config, manager.lora_backend,
        base_model=manager.base_model))
    return adapter, adapter_host_bytes(adapter)
