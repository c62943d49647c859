"""What one adapter costs the host budget: an estimate before its read, the real count after.

Engine-neutral: ``adapter_host_bytes`` reads only the loaded adapter's tensors
(``.layers[i].weights``, ``.embedding_layers``, ``.added_tokens_embeddings``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable

# What an adapter costs in host memory beyond its tensor bytes: Python objects of SGLang's
# LoRAAdapter, LoRAConfig and per-layer dicts, and one torch tensor object plus allocator
# rounding per tensor. Measured on CPU (bench/state_growth_bench.py): filling a 64 MiB budget
# with rank-1 synthetic adapters grew the scheduler by about 48 KB per adapter, of which about
# 10 KB is tensor data.
ADAPTER_OVERHEAD_BYTES = 24 << 10
TENSOR_OVERHEAD_BYTES = 1 << 10
ALLOC_ALIGN = 64


def adapter_host_bytes(adapter) -> int:
    """What one loaded ``LoRAAdapter`` holds in host memory, tensors and objects together.

    A rank-1 synthetic adapter of the tiny Llama holds about 10 KB of tensor data but grows
    the scheduler by about 48 KB once its objects are counted; this counts about 49 KB.
    """
    tensors = [t for layer in adapter.layers for t in layer.weights.values()]
    tensors += list(adapter.embedding_layers.values()) + list(adapter.added_tokens_embeddings.values())
    # Each storage once: a packed adapter's tensors are views of one buffer, a shared one's of one mapping.
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return held_host_bytes(len(tensors), storages.values())


def held_host_bytes(tensor_count: int, storage_nbytes: Iterable[int]) -> int:
    """What an adapter of ``tensor_count`` tensors over storages of ``storage_nbytes`` holds in host
    memory, its objects counted: the tiny Llama's rank-1 adapter, 16 tensors and 8,192 bytes of
    data, holds 24 KiB + 16 x 1 KiB + 8 KiB = 49,152 bytes."""
    data = sum(-(-n // ALLOC_ALIGN) * ALLOC_ALIGN for n in storage_nbytes)
    return ADAPTER_OVERHEAD_BYTES + TENSOR_OVERHEAD_BYTES * tensor_count + data


def read_estimate_bytes(file_bytes: int, loaded_bytes: int = 0, tensor_count: int = 0) -> int:
    """Host bytes to reserve before reading an adapter: what the catalog recorded it holds once
    loaded (``loaded_bytes`` of tensors after rank padding, ``tensor_count`` tensors), or for a
    revision recorded without them, its ``file_bytes`` and 32 tensors. The real count
    (adapter_host_bytes) replaces the estimate once the adapter is built."""
    if not loaded_bytes:
        return ADAPTER_OVERHEAD_BYTES + 32 * TENSOR_OVERHEAD_BYTES + file_bytes
    return ADAPTER_OVERHEAD_BYTES + (TENSOR_OVERHEAD_BYTES + ALLOC_ALIGN) * tensor_count + loaded_bytes


def node_status(residency) -> dict:
    """A scheduler residency's status, with every TP rank's and the host bytes per node under
    tensor parallelism (``residency``: scheduler_residency.SchedulerResidency).

    Every rank handles the same get_internal_state request in the same iteration, so all of them
    reach the gather; only rank 0's answer goes back to the tokenizer manager."""
    mine = residency.status()
    ranks = [mine] if residency.agreement is None else residency.agreement.gather(mine)
    nodes: dict[str, int] = {}
    for r in ranks:
        # Shared (node_share.py): the ranks of a node map one copy of the same adapters.
        nodes[r["host"]] = (max if residency.share is not None else int.__add__)(nodes.get(r["host"], 0),
                                                                                r["host_bytes"])
    keys = ("tp_rank", "host", "pid", "host_bytes", "host_peak_bytes", "resident")
    return {**mine, "ranks": [{k: r[k] for k in keys} for r in ranks], "node_host_bytes": nodes,
            "node_shared": residency.share is not None}


def proportional_sizes(pid: int | str = "self") -> dict[str, int | None]:
    """A process's memory (this one's by default) with shared pages split among their sharers, in
    bytes, from one read of /proc/<pid>/smaps_rollup. The kernel walks the process's page tables
    for it: 38 ms for a process holding 2.7 GB here, so a scheduler is read from outside, by the
    frontend that answers /mint/status, never on its own loop.

    - ``pss_bytes``: all of it (Linux ``Pss``). Its mapped libraries are in it too, so it moves
      whenever another process maps the same libraries: a process importing torch drops from
      about 510 to 330 MB while four others import torch, with no allocation of its own.
    - ``pss_data_bytes``: its heap, tensors and shared memory (``Pss_Anon`` + ``Pss_Shmem``),
      what adapters held in host memory occupy, whatever else runs beside this process.

    Both are None where there is no smaps_rollup (or no such process)."""
    found = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                name, _, rest = line.partition(":")
                if name in ("Pss", "Pss_Anon", "Pss_Shmem"):
                    found[name] = int(rest.split()[0]) * 1024
    except OSError:
        pass
    data = found["Pss_Anon"] + found["Pss_Shmem"] if "Pss_Anon" in found and "Pss_Shmem" in found else None
    return {"pss_bytes": found.get("Pss"), "pss_data_bytes": data}


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to call
        return None


_MALLOC_TRIM = _malloc_trim()


def release_free_memory() -> None:
    """Return the allocator's free pages to the system (glibc's ``malloc_trim``; a no-op elsewhere).

    A cold read frees its file buffer and unpadded tensors, and an eviction an adapter's
    tensors; glibc keeps small and medium chunks in its arenas (one per reading thread), so
    measured on CPU with six 8 MiB adapters through a 25 MiB budget the scheduler grew by
    56 MiB without this and 32 MiB with it after evictions only."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)
