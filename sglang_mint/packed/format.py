"""mintpack format, version 1.

A packed adapter is ONE file that is also a valid safetensors file::

    [u64 little-endian N] [N bytes of JSON header, space-padded] [data region]

* ``8 + N`` is a multiple of 4096, so the data region starts on a page
  boundary of the file (mmap, direct I/O, and a page-aligned host buffer all
  line up with it).
* The header is safetensors' own: ``{name: {"dtype", "shape", "data_offsets":
  [begin, end]}}`` with offsets relative to the data region, plus
  ``"__metadata__": {"mint_format": "mintpack/1", "mint": "<JSON>"}``.
* Tensors are back to back, in the order the engine's LoRA pool consumes them
  (layer by layer; inside a layer by module name, A before B). safetensors
  forbids holes between tensors, so tensors are aligned to their element
  size, not to 64 bytes: padding would need fake tensors that every
  safetensors reader would then show. The reader copies the whole region at
  once, so per-tensor alignment would buy nothing.
* Every tensor has the same dtype (F32, F16 or BF16), named in ``mint.dtype``.

The ``mint`` metadata (JSON)::

    {"version": 1, "rank": R, "alpha": A, "dtype": "BF16",
     "base": {"name": ..., "model_type": ..., "hidden_size": ..., "num_hidden_layers": ...,
              "num_experts": ..., "stack_outs": {"q_proj": ..., ...}},  # what the converter knew; may be partial
     "target_modules": ["q_proj", ...],        # PEFT names, as adapter_config.json lists them
     "tensors": {stored_name: {"slices": C, "parts": [part, ...]}}}

Stored tensors are in the engine's fused form (the form an engine's pool
stores; vLLM and SGLang both fuse these):

* ``q/k/v_proj`` -> ``qkv_proj``; ``gate/up_proj`` -> ``gate_up_proj`` (dense
  and experts); ``q_a_proj`` + ``kv_a_proj_with_mqa`` ->
  ``fused_qkv_a_proj_with_mqa``. A of a fused module is the C slices stacked
  on the rank axis ([C*R, in]), B the outputs stacked ([out_1+...+out_C, R]).
* MoE experts are 3D per layer and projection: A ``[E, C*R, in]``, B
  ``[E, out, R]``; shared-outer adapters keep their ``[1, ...]``.
* Every slice has exactly R rank rows/columns; a module of smaller rank is
  zero-padded (exact: zero rows of A meet zero columns of B).
* Names keep the source prefix (``base_model.model.model.layers.3.mlp.experts.
  gate_up_proj.lora_A.weight``).

``parts`` says where each SOURCE tensor of the PEFT folder lives in a stored
tensor, so unpacking gives back every source tensor bit-exactly (for an
adapter whose modules had different scalings the source is its uniform form,
``uniform_lora``; ``peft_config`` is then the uniform config too)::

    {"src": name, "expert": e | null, "dim": d, "start": s, "stop": t,
     "layout": "plain" | "peft_experts_A" | "peft_experts_B"}

A part with ``"expert": "each", "experts": E`` and ``{e}`` in ``src`` stands for
E parts, one per expert (keeps the header small for per-expert sources).
``view = stored[expert] if expert is not None else stored``; then
``view.narrow(dim, s, t - s)`` is the source tensor (``plain``), or its image
under PEFT's fused-expert layout: A ``[E*R, in]`` is ``view.reshape(E*R, in)``
and B ``[out, R*E]`` is ``view.permute(1, 2, 0).reshape(out, R*E)``. Regions no
part covers are zeros (padding, or a member of a stack the source lacked: a k_proj
alone is stored in qkv_proj beside zeros of q_proj's and v_proj's widths, as
adapters/stack_fill.py completes it for SGLang).
"""

from __future__ import annotations

import json
import struct

from sglang_mint.adapters.folder_form import PACKED as PACKED_FILE  # noqa: F401 (the format's file name)
from sglang_mint.adapters.safetensors_io import MAX_HEADER_BYTES, JSONRefused, load_bounded_json
from sglang_mint.errors import MintError

FORMAT_VERSION = 1
FORMAT_TAG = f"mintpack/{FORMAT_VERSION}"
ALIGN = 4096
# safetensors' own limit (100 MB): a mintpack is a safetensors file, and an upload is read with
# safetensors.torch.load too. The converter writes 0.43 MB for a per-expert DeepSeek-V3 adapter
# (90,064 source tensors, 964 stored); listing its 89,088 expert parts one by one would take 13 MB.
MAX_HEADER = MAX_HEADER_BYTES

# safetensors dtype name -> bytes per element
DTYPE_SIZES = {"F32": 4, "F16": 2, "BF16": 2}


class PackedError(MintError):
    """A packed file is unusable; the message names the file and the problem."""


class TensorEntry:
    __slots__ = ("name", "dtype", "shape", "begin", "end")

    def __init__(self, name: str, dtype: str, shape: list[int], begin: int, end: int):
        self.name, self.dtype, self.shape, self.begin, self.end = name, dtype, shape, begin, end


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def encode_header(entries: list[TensorEntry], mint: dict) -> bytes:
    """The first ``8 + N`` bytes of the file, N chosen so the data starts at a multiple of ALIGN."""
    header: dict = {"__metadata__": {"mint_format": FORMAT_TAG, "mint": json.dumps(mint, separators=(",", ":"))}}
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [e.begin, e.end]}
    body = json.dumps(header, separators=(",", ":")).encode()
    total = -(-(8 + len(body)) // ALIGN) * ALIGN
    body += b" " * (total - 8 - len(body))
    return struct.pack("<Q", len(body)) + body


def decode_header(prefix: bytes, file_size: int, where: str) -> tuple[int, list[TensorEntry], dict]:
    """Parse and check the header against the file size; touch no data.

    Returns (data_start, entries in offset order, mint metadata). Raises
    PackedError for a truncated file, a header that is not JSON, not
    mintpack/1, tensors whose offsets disagree with shape x dtype, holes,
    overlaps, or a data region longer than the file. The header, then the
    mint string in it, is refused unparsed when it has more JSON items than
    any adapter (safetensors_io.MAX_JSON_ITEMS): json.loads of ``[{},{},...]``
    holds 25 times its bytes. The mint string is counted again, decoded: its
    commas may be ``\\u002c`` escapes, which the header's count does not see.
    """
    def bad(msg: str) -> PackedError:
        return PackedError(f"{where}: {msg}")

    def parse(text: bytes | str, what: str):
        try:
            return load_bounded_json(text)
        except JSONRefused as exc:
            raise bad(f"{what} {exc}") from None

    if file_size < 8 or len(prefix) < 8:
        raise bad(f"truncated: {file_size} bytes, not even a header length")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER:
        raise bad(f"corrupt header: it claims {n} bytes, more than the {MAX_HEADER} safetensors allows")
    if 8 + n > file_size:
        raise bad(f"corrupt header: it claims {n} bytes but the file has {file_size}")
    if len(prefix) < 8 + n:
        raise bad("internal: header prefix too short")
    try:
        header = parse(prefix[8:8 + n], "header")
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad(f"corrupt header: not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise bad("corrupt header: not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict):
        raise bad(f"not a {FORMAT_TAG} file (__metadata__ is a {type(meta).__name__}, not an object)")
    if meta.get("mint_format") != FORMAT_TAG:
        raise bad(f"not a {FORMAT_TAG} file (mint_format={meta.get('mint_format')!r})")
    try:
        if not isinstance(meta.get("mint"), str):
            raise TypeError(f"mint is {type(meta.get('mint')).__name__}, not a JSON string")
        mint = parse(meta["mint"], "mint metadata")
        rank, dtype = int(mint["rank"]), mint["dtype"]
        mint["tensors"]
    except (KeyError, TypeError, ValueError) as exc:
        raise bad(f"corrupt header: mint metadata unreadable ({exc!r})") from None
    if dtype not in DTYPE_SIZES:
        raise bad(f"unsupported dtype {dtype!r} (supported: {', '.join(DTYPE_SIZES)})")
    if rank < 1:
        raise bad(f"corrupt header: rank {rank}")

    entries = []
    for name, t in header.items():
        try:
            shape = [int(s) for s in t["shape"]]
            begin, end = (int(x) for x in t["data_offsets"])
            tdtype = t["dtype"]
        except (KeyError, TypeError, ValueError):
            raise bad(f"corrupt header: entry {name!r} is malformed") from None
        if tdtype != dtype:
            raise bad(f"tensor {name} has dtype {tdtype}, the file declares {dtype}")
        if any(s < 0 for s in shape) or end - begin != numel(shape) * DTYPE_SIZES[dtype]:
            raise bad(f"corrupt header: tensor {name} offsets [{begin}, {end}) disagree with shape {shape} x {dtype}")
        entries.append(TensorEntry(name, tdtype, shape, begin, end))
    entries.sort(key=lambda e: e.begin)
    pos = 0
    for e in entries:
        if e.begin != pos:
            raise bad(f"corrupt header: tensor {e.name} starts at {e.begin}, expected {pos} (hole or overlap)")
        pos = e.end
    data_start = 8 + n
    if data_start + pos > file_size:
        raise bad(f"truncated data region: the header needs {pos} bytes after offset {data_start}, "
                  f"the file has {file_size - data_start}")
    if data_start + pos != file_size:
        raise bad(f"corrupt file: {file_size - data_start - pos} trailing bytes after the data region")
    return data_start, entries, mint
