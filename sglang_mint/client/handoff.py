"""How a publish's bytes leave the trainer: as buffers, never joined, and through shared memory when
the server runs on the same machine.

``safetensors_parts`` lays a state dict out as a safetensors file made of the header and each
tensor's own memory (no copy of the weights: ``safetensors.torch.save`` copies them once into its
bytes, and joining a multipart body twice more). The server reads them as it reads any
``adapter_model.safetensors``. Tensors are written in name order, so the same weights give the same
bytes, and the same content digest, whatever order the trainer's dict has.

``Inbox``: a server with shared memory (``GET /mint/inbox``) takes the files from a folder in its
inbox (``/dev/shm/sglang-mint-<uid>/<port>/inbox``, this user's only) instead of the request body.
The trainer writes them there (one copy, into memory) and the publish request names the folder; the
server moves them into place (a rename) and checks and hashes them as it does an upload. A server on
another machine, or another user's, is sent the body over HTTP as before.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from typing import Any, Mapping

SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64",
                      "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def safetensors_parts(tensors: Mapping[str, Any]) -> list:
    """``[header, buffer, buffer, ...]`` whose concatenation is a safetensors file of ``tensors``."""
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    buffers, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        dtype = SAFETENSORS_DTYPES.get(str(t.dtype).removeprefix("torch."))
        if dtype is None:
            raise ValueError(f"tensor {name!r} has dtype {t.dtype}, which safetensors does not hold")
        raw = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + raw.nbytes]}
        buffers.append(raw)
        offset += raw.nbytes
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the tensors start 8-aligned, as safetensors writes them
    return [len(encoded).to_bytes(8, "little") + encoded, *buffers]


def size_of(parts: list) -> int:
    return sum(memoryview(p).nbytes for p in parts)


class Inbox:
    """The server's shared-memory inbox, when this process can write into it."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def of(cls, answer: dict | None) -> "Inbox | None":
        """The inbox ``GET /mint/inbox`` names, if it is on this machine and writable by this user."""
        if not isinstance(answer, dict) or answer.get("host") != socket.gethostname():
            return None
        path = answer.get("path")
        if not isinstance(path, str) or not os.path.isdir(path) or not os.access(path, os.W_OK):
            return None
        return cls(path)

    def put(self, files: dict[str, list]) -> str:
        """Write the files ({name: parts}) into a new folder of the inbox; returns its name."""
        token = uuid.uuid4().hex
        folder = os.path.join(self.path, token)
        os.mkdir(folder, 0o700)
        try:
            for name, parts in files.items():
                with open(os.path.join(folder, name), "xb") as f:
                    for part in parts:
                        f.write(part)
        except BaseException:  # /dev/shm full: what was written is RAM that no publish will take
            self.discard(token)
            raise
        return token

    def discard(self, token: str) -> None:
        """Remove folder ``token`` if the server has not taken it: a publish refused before its handler
        (401, 429, a bad id) left the adapter in shared memory until the server stopped."""
        shutil.rmtree(os.path.join(self.path, token), ignore_errors=True)
