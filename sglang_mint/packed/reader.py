"""Read a mintpack/1 file: check the header, then ONE copy of the data region.

The file is mmapped; the data region is copied once into a host buffer
(pinned when CUDA is available, so host-to-device copies can be async) and
every tensor is a view into that buffer. Nothing touches the data before the
header has been checked against the file size.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass

import numpy as np
import torch

from sglang_mint.packed.format import PackedError, decode_header
from sglang_mint.packed.writer import TORCH_DTYPES


@dataclass
class PackedAdapter:
    path: str
    mint: dict                      # the header's mint metadata
    tensors: dict[str, torch.Tensor]  # stored name -> view into buffer, in file order
    buffer: torch.Tensor            # uint8, the whole data region

    @property
    def rank(self) -> int:
        return int(self.mint["rank"])

    @property
    def alpha(self) -> float:
        return float(self.mint["alpha"])

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()


def read_header(path: str) -> tuple[int, list, dict, int]:
    """(data_start, entries, mint, file_size); reads only the header bytes."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) == 8:
                n = int.from_bytes(head, "little")
                if n <= size - 8:
                    head += f.read(n)
    except OSError as exc:
        raise PackedError(f"{path}: cannot read ({exc.strerror})") from None
    data_start, entries, mint = decode_header(head, size, path)
    return data_start, entries, mint, size


def read_packed(path: str, pin: bool | None = None) -> PackedAdapter:
    """Load a packed adapter into host memory with one copy of its data region."""
    data_start, entries, mint, size = read_header(path)
    nbytes = size - data_start
    if pin is None:
        pin = torch.cuda.is_available()
    buffer = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    if nbytes:
        with open(path, "rb") as f:
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                if hasattr(mm, "madvise"):
                    mm.madvise(mmap.MADV_SEQUENTIAL)
                src = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=data_start)
                np.copyto(buffer.numpy(), src)  # the one copy
                del src
    dtype = TORCH_DTYPES[mint["dtype"]]
    tensors = {e.name: buffer[e.begin:e.end].view(dtype).view(e.shape) for e in entries}
    return PackedAdapter(path=path, mint=mint, tensors=tensors, buffer=buffer)
