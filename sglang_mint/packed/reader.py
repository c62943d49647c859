"""Read a mintpack/1 file: check the header, then ONE copy of the data region.

The file is mmapped; the data region is copied once into a host buffer
(pinned when CUDA is available, so host-to-device copies can be async) and
every tensor is a view into that buffer. Nothing touches the data before the
header has been checked against the file size, and, in an engine, against the
base model it serves (``check_against_base``).
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from typing import Callable

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


def config_identity(hf_config) -> dict:
    """The base model identity a packed header records (``mint.base``), read off a transformers config."""
    cfg = hf_config.get_text_config() if hasattr(hf_config, "get_text_config") else hf_config
    ident = {k: getattr(cfg, k, None) for k in ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")}
    for k in ("num_experts", "n_routed_experts", "num_local_experts"):
        if getattr(cfg, k, None):
            ident["num_experts"] = int(getattr(cfg, k))
            break
    return ident


def check_against_base(path: str, mint: dict, entries, rank: int, hf_config,
                       layer_of: Callable[[str], int | None]) -> None:
    """Everything that can be checked before the data is read: the adapter config's ``rank``, the
    base model ``hf_config`` the engine serves, and each tensor's layer (``layer_of``, the engine's
    rule: ``"model.layers.10.self_attn.q_proj.lora_A.weight"`` -> 10) and expert count."""
    if int(mint["rank"]) != int(rank):
        raise PackedError(f"{path}: packed rank {mint['rank']} but adapter_config.json says r={rank}")
    engine = config_identity(hf_config)
    for key, want in (mint.get("base") or {}).items():
        have = engine.get(key)
        if key in engine and want is not None and have is not None and want != have:
            raise PackedError(f"{path}: packed for a different base model: {key}={want}, the engine has {have}")
    layers, experts = engine["num_hidden_layers"], engine.get("num_experts")
    for e in entries:
        lid = layer_of(e.name)
        if lid is not None and layers is not None and lid >= layers:
            raise PackedError(f"{path}: tensor {e.name} is for layer {lid}, the base model has {layers}")
        if ".experts." in e.name and len(e.shape) == 3 and experts and e.shape[0] not in (1, experts):
            raise PackedError(f"{path}: tensor {e.name} has {e.shape[0]} experts, the base model has {experts}")
