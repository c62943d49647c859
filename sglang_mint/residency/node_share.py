"""One host copy of a catalog adapter per node under tensor parallelism.

In SGLang every TP rank builds its own ``LoRAAdapter`` with the full weights
(each rank slices its part only when it fills its GPU pool), so with
``--tp-size 8`` a resident adapter would sit in host memory eight times. Here
TP rank 0 reads and checks the adapter as before, then writes its final
tensors (after SGLang's qkv / gate_up fusing) once into a file in ``/dev/shm``
and maps it; the other ranks map the same file instead of reading the
catalog. The pages exist once per node, and every rank's tensors are views of
them. A read that fails on rank 0 leaves a ``.failed`` file with its message,
so every rank fails it with the same words.

Files live in ``/dev/shm/sglang-mint-<port>-dp<rank>/``, named by the read's
sequence number, which every rank of the group counts the same way because the
ranks start reads in agreement (rank_agreement.py)::

    00000042.meta   pickle: the adapter's LoRAConfig, tensor index, extra attributes
    00000042.bin    the tensors back to back, 64-byte aligned; renamed into place last
    00000042.failed rank 0's failure message instead of the two above

Rank 0 removes a read's files as soon as the ranks agree it is installed
(every rank has mapped it by then, and a mapping keeps its pages) or failed,
and the whole folder at startup, so only reads in flight can outlive a killed
server, until its next start. The pages go when the last rank drops its
views, at eviction.

Engine-neutral: it walks an adapter's tensors the way host_bytes.adapter_host_bytes
does (``.layers[i].weights``, ``.embedding_layers``, ``.added_tokens_embeddings``),
and ``attach`` takes the engine's constructor of an empty adapter.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import pickle
import shutil
import time

import torch

ALIGN = 64
SHM_ROOT = "/dev/shm"
ATTACH_TIMEOUT_S = 600.0


def group_dir(port: int, dp_rank: int) -> str:
    return os.path.join(SHM_ROOT, f"sglang-mint-{port}-dp{dp_rank}")


class NodeShare:
    """The adapter files one TP group shares; ``rank`` 0 writes, the others map."""

    def __init__(self, folder: str, rank: int):
        self.folder = folder
        self.rank = rank
        if rank == 0:
            shutil.rmtree(folder, ignore_errors=True)
            os.makedirs(folder, mode=0o700)

    def _path(self, seq: int, suffix: str) -> str:
        return os.path.join(self.folder, f"{seq:08d}.{suffix}")

    # -- rank 0 ------------------------------------------------------------------
    def publish(self, seq: int, adapter) -> None:
        """Write ``adapter``'s tensors once and make ``adapter`` use views of the shared pages."""
        slots = list(_tensor_slots(adapter))
        index, offset = [], 0
        for where, name, t in slots:
            index.append((where, name, t.dtype, tuple(t.shape), offset))
            offset += -(-t.numel() * t.element_size() // ALIGN) * ALIGN
        extra = {"mint_packed": getattr(adapter, "mint_packed", None)}
        with open(self._path(seq, "meta"), "wb") as f:
            pickle.dump((adapter.config, index, extra), f)
        tmp = self._path(seq, "bin.tmp")
        try:
            with open(tmp, "wb") as f:
                f.truncate(max(offset, 1))
                for (where, name, t), (_, _, _, _, start) in zip(slots, index):
                    f.seek(start)
                    f.write(t.detach().contiguous().view(torch.uint8).reshape(-1).numpy().tobytes())
            os.rename(tmp, self._path(seq, "bin"))
        except BaseException:  # e.g. /dev/shm full: shared memory is RAM, leave none of it behind
            for path in (tmp, self._path(seq, "meta")):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            raise
        _bind(adapter, self._views(seq, index))

    def publish_failure(self, seq: int, message: str) -> None:
        with open(self._path(seq, "failed.tmp"), "w") as f:
            f.write(message)
        os.rename(self._path(seq, "failed.tmp"), self._path(seq, "failed"))

    def drop(self, seq: int) -> None:
        for suffix in ("meta", "bin", "failed"):
            try:
                os.unlink(self._path(seq, suffix))
            except FileNotFoundError:
                pass

    # -- the other ranks -------------------------------------------------------------
    def attach(self, seq: int, make_adapter, timeout: float = ATTACH_TIMEOUT_S):
        """Wait for rank 0's files of read ``seq``; return a LoRAAdapter viewing them.

        ``make_adapter(config)`` builds the empty LoRAAdapter. Raises RuntimeError with rank
        0's message if its read failed, TimeoutError if rank 0 wrote nothing in ``timeout``."""
        deadline = time.monotonic() + timeout
        pause = 0.0005
        while not os.path.exists(self._path(seq, "bin")):
            if os.path.exists(self._path(seq, "failed")):
                with open(self._path(seq, "failed")) as f:
                    raise RuntimeError(f.read())
            if time.monotonic() > deadline:
                raise TimeoutError(f"TP rank 0 did not share read {seq} within {timeout:.0f}s")
            time.sleep(pause)
            pause = min(pause * 2, 0.02)
        with open(self._path(seq, "meta"), "rb") as f:
            config, index, extra = pickle.load(f)
        adapter = make_adapter(config)
        _bind(adapter, self._views(seq, index))
        if extra.get("mint_packed") is not None:
            object.__setattr__(adapter, "mint_packed", extra["mint_packed"])
        return adapter

    def _views(self, seq: int, index) -> list:
        with open(self._path(seq, "bin"), "rb") as f:
            # ACCESS_COPY: a writable buffer for torch, whose pages stay the shared ones unless
            # written, and nothing writes to adapter weights
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        whole = torch.frombuffer(mm, dtype=torch.uint8)
        views = []
        for where, name, dtype, shape, start in index:
            n = 1
            for d in shape:
                n *= d
            size = n * torch.empty((), dtype=dtype).element_size()
            views.append((where, name, whole[start:start + size].view(dtype).view(shape)))
        return views


def _tensor_slots(adapter):
    """(where, name, tensor) for every weight an adapter holds; where is a layer index or a dict name."""
    for i, layer in enumerate(adapter.layers):
        for name, t in layer.weights.items():
            yield i, name, t
    for attr in ("embedding_layers", "added_tokens_embeddings"):
        for name, t in getattr(adapter, attr).items():
            yield attr, name, t


def _bind(adapter, views) -> None:
    for where, name, t in views:
        if isinstance(where, int):
            adapter.layers[where].weights[name] = t
        else:
            getattr(adapter, where)[name] = t
