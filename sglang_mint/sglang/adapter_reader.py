"""A catalog revision -> SGLang's ``LoRAAdapter``, built on a cold-load worker thread (docs/architecture.md, step 5).

``read_adapter`` reads and checks the revision's files (adapters/peft.py) and builds
the adapter; ``attach_adapter`` maps the copy tensor-parallel rank 0 read
(residency/node_share.py). Both return ``(LoRAAdapter, host bytes)`` for residency.py.
"""

from __future__ import annotations

import copy
import inspect
import logging
import os
import threading

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import load_for_serving, read_served_config
from sglang_mint.catalog.upload import rank_above_max
from sglang_mint.residency.host_bytes import adapter_host_bytes


def pool_misfit(pool, config) -> str:
    """Why SGLang's ``pool.can_support(config)`` said no, in its own terms (mem_pool.py), and the fix."""
    from sglang.srt.lora.utils import get_normalized_target_modules

    why = []
    wanted = get_normalized_target_modules(config.target_modules)
    missing = sorted(wanted - set(pool.target_modules)) if "all" not in wanted else []
    if missing:
        why.append(f"modules {missing} are not in this server's --lora-target-modules "
                   f"({' '.join(sorted(pool.target_modules))})")
    if config.lora_added_tokens_size > pool.lora_added_tokens_size:
        why.append(f"{config.lora_added_tokens_size} added tokens are more than the pool holds "
                   f"({pool.lora_added_tokens_size})")
    fix = ": publish a revision that fits, or restart the server with flags that hold it"
    if config.r > pool.max_lora_rank:  # the upload's own refusal, with its fix
        return "; ".join([rank_above_max(config.r, pool.max_lora_rank), *why]) + (fix if why else "")
    return ("; ".join(why) or "it does not fit the server's LoRA pool") + fix


def read_adapter(manager, catalog, lora_id: str, rev):
    """Build revision ``rev`` (the catalog's record) for SGLang's LoRA ``manager``."""
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig

    from sglang_mint.adapters.folder_form import packed_file

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
    if packed_file(path) is None:
        # A staged file is in shared memory: mapped, not copied (peft.map_safetensors).
        uniform_config, tensors = load_for_serving(path, config.hf_config, catalog.base, where, mapped=staged)
        if uniform_config is not config.hf_config:
            config.hf_config = uniform_config
            config.r, config.lora_alpha = uniform_config["r"], uniform_config["lora_alpha"]
    if config.use_dora:
        raise ValueError("DoRA adapters are not supported")
    if not manager.memory_pool.can_support(config):
        raise ValueError(f"{where}: {pool_misfit(manager.memory_pool, config)}")
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
    refusal = fill_refusal(manager, lora_id, adapter)
    if refusal:
        raise InvalidAdapter(f"{where}: SGLang's LoRA pool fill refuses it: {refusal}")
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


class _DryFill(logging.Filter):
    """Drops the pool fill's log lines ("loaded weights for target modules ...") while this thread dry-runs
    it: the scheduler's real fill says them when the adapter is filled."""

    def __init__(self):
        super().__init__()
        self.local = threading.local()

    def filter(self, record) -> bool:
        return not getattr(self.local, "running", False)


_DRY_FILL = _DryFill()


def fill_refusal(manager, lora_id: str, adapter) -> str | None:
    """What SGLang's pool fill (``LoRAMemoryPool.load_lora_weight_to_buffer``) raises for ``adapter``, or None.

    The fill runs on the scheduler's loop as a batch is formed, and anything it raises there stops the
    server for every tenant: a weight whose shape does not fit its slot after the layer's own slice
    (its assert), an expert past the pool's, per-expert weights where the pool shares one across every
    expert (``experts_shared_outer_loras``, set at startup from ``--lora-paths``). So the read thread runs
    that very fill first, against a copy of the pool whose buffers are meta tensors: shapes only, nothing
    copied, no slot touched, no pinned copy made. Example: a model served with a 320-wide MLP and a
    revision whose down_proj lora_A is [4, 256] -> "AssertionError: LoRA buffer shape torch.Size([4, 320])
    does not match weight shape torch.Size([4, 256])". Tensor-parallel ranks other than 0 attach what
    rank 0 read, and their own slices are not tried."""
    from sglang.srt.lora.mem_pool import LoRAMemoryPool

    from sglang_mint.sglang.packed_pool import fill_plan

    if getattr(adapter, "mint_packed", None) is not None and fill_plan(manager.memory_pool, adapter,
                                                                     manager.lora_modules) is not None:
        return None  # packed_pool's one-copy fill will run: its plan (kept for it) checked every slot's shape
    logger = logging.getLogger(LoRAMemoryPool.__module__)
    if _DRY_FILL not in logger.filters:
        logger.addFilter(_DRY_FILL)
    _DRY_FILL.local.running = True
    try:
        # SGLang's own, past the hooks (HookRegistry sets __wrapped__): packed_pool's fill, where it applies,
        # is bit-identical to it and hands it whatever does not fit, and its timing and log are for real fills
        sglang_fill = inspect.unwrap(LoRAMemoryPool.load_lora_weight_to_buffer)
        sglang_fill(dry_pool(manager.memory_pool), lora_id, 0, adapter, manager.lora_modules,
                    manager.embed_tokens_module, manager.lm_head_module)
    except Exception as exc:  # whatever it raises, it would raise on the scheduler's loop
        text = str(exc)
        return f"{type(exc).__name__}: {text if len(text) <= 400 else text[:400] + '...'}"
    finally:
        _DRY_FILL.local.running = False
    return None


def dry_pool(pool):
    """A shallow copy of SGLang's LoRA ``pool`` whose buffers (``*_buffer``: dicts of per-layer lists or
    tensors) are meta tensors of the same shapes, and which pins nothing."""
    import torch

    def meta(v):
        if isinstance(v, torch.Tensor):
            return torch.empty(v.shape, dtype=v.dtype, device="meta")
        if isinstance(v, dict):
            return {k: meta(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(meta(x) for x in v)
        return v

    dry = copy.copy(pool)
    for name, value in vars(pool).items():
        if name.endswith("_buffer") and isinstance(value, (dict, list, torch.Tensor)):
            setattr(dry, name, meta(value))
    dry.pin_memory_available = False
    return dry


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
