"""Write a mintpack/1 file from tensors already in stored (fused) form."""

from __future__ import annotations

import os

import torch

from sglang_mint.packed.format import DTYPE_SIZES, PackedError, TensorEntry, encode_header

TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}
DTYPE_NAMES = {v: k for k, v in TORCH_DTYPES.items()}


def _entries(tensors: list[tuple[str, torch.Tensor]], mint: dict, where: str) -> tuple[bytes, int]:
    dtype = mint["dtype"]
    if dtype not in DTYPE_SIZES:
        raise PackedError(f"{where}: unsupported dtype {dtype!r}")
    entries, pos = [], 0
    for name, t in tensors:
        if DTYPE_NAMES.get(t.dtype) != dtype:
            raise PackedError(f"{where}: tensor {name} is {t.dtype}, the adapter is {dtype}")
        size = t.numel() * DTYPE_SIZES[dtype]
        entries.append(TensorEntry(name, dtype, list(t.shape), pos, pos + size))
        pos += size
    return encode_header(entries, {"version": 1, **mint}), pos


def _raw(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().cpu().view(torch.uint8).numpy())


def write_packed(path: str, tensors: list[tuple[str, torch.Tensor]], mint: dict) -> int:
    """Write ``tensors`` (in pool order) and ``mint`` metadata to ``path`` atomically.

    ``mint`` must hold rank, alpha, dtype, tensors (the part map) and may hold
    base and target_modules. Returns the file size.
    """
    head, pos = _entries(tensors, mint, path)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(head)
        for _, t in tensors:
            f.write(_raw(t))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(head) + pos


def encode_packed(tensors: list[tuple[str, torch.Tensor]], mint: dict, where: str = "<memory>") -> bytearray:
    """The bytes ``write_packed`` would write, in memory (the catalog stores them as a blob)."""
    head, pos = _entries(tensors, mint, where)
    out = bytearray(len(head) + pos)
    out[:len(head)] = head
    at = len(head)
    for _, t in tensors:
        raw = _raw(t)
        out[at:at + raw.nbytes] = raw
        at += raw.nbytes
    return out  # no second copy: a bytearray hashes and writes like bytes
