"""Reading a safetensors file of LoRA weights, checked before a tensor is trusted.

``read_safetensors_header`` counts the header's JSON items (one with more than
any adapter has is refused unparsed), then parses and bounds-checks it
(truncation, overlapping or gapped offsets, shape/size disagreements);
``read_safetensors`` reads each tensor into its own memory and
``map_safetensors`` maps them (a revision staged in /dev/shm). Every error is an InvalidAdapter naming the file
and tensor. Moved here from peft.py, which re-exports these names.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct

from sglang_mint.adapters.errors import InvalidAdapter

WEIGHTS = "adapter_model.safetensors"

# The reference parser's limit on a safetensors header (safetensors' MAX_HEADER_SIZE). A per-expert
# DeepSeek-V3 adapter (about 89,000 tensors) has a header of about 12 MB.
MAX_HEADER_BYTES = 100_000_000
# The most JSON items (json_items) a header may hold; more is refused before json.loads sees it.
# json.loads keeps 40-170 bytes of Python objects per item beyond the text's own bytes:
# {"x":[{},{},...]} holds 25 times its size (13 MB of it, 316 MB), 100 MB of it would take 2.5 GB.
# A tensor entry is 8 items ("name":{"dtype":"BF16","shape":[a,b],"data_offsets":[x,y]}: 5 commas,
# 1 brace, 2 brackets): a per-expert DeepSeek-V3 adapter (89,088 tensors) has 712,706 and parses
# into 77 MB. 2 M items admit 250,000 tensors, more than a per-expert adapter of any open MoE model
# has (Kimi K2: 138,240; 60 layers of 512 experts would be 184,320), and hold a parse to about
# 340 MB besides the header and json.loads' str of it (the costliest item, measured: 171 bytes in
# {"1":"1","2":"2",...}, 420 MB for 38 MB); a real 250,000-tensor header would take about 220 MB.
MAX_JSON_ITEMS = 2_000_000
# The most bytes of a header holding anything but ASCII. Few items can still be many bytes: one
# string of 4-byte characters held 6 times its size as json.loads read it (13 MB: 75 MB). Tensor
# names, dtypes and numbers are ASCII; only __metadata__ text may not be, and it is short.
MAX_NON_ASCII_BYTES = 1 << 20
# safetensors dtype -> (bytes per element, our dtype name)
DTYPES = {"F16": (2, "float16"), "BF16": (2, "bfloat16"), "F32": (4, "float32"), "F64": (8, "float64")}


def json_items(text: bytes | str) -> int:
    """Commas, braces and brackets in ``text``: at least the number of values json.loads(text) makes,
    less one, counted at C speed with nothing allocated. Each value but the outermost follows the
    comma before it or the bracket that opens its container. Example: ``{"a":[1,2],"b":{}}`` makes
    5 values (the two objects, the list, 1, 2) and has 2 + 2 + 1 = 5 items. Commas and brackets
    inside strings count too, so the count errs high, never low."""
    if isinstance(text, str):
        return text.count(",") + text.count("{") + text.count("[")
    return text.count(b",") + text.count(b"{") + text.count(b"[")


class JSONRefused(ValueError):
    """A header's JSON refused without parsing it, or past Python's recursion limit; says which."""


def load_bounded_json(text: bytes | str):
    """``json.loads(text)`` for a header a client wrote: JSONRefused, unparsed, past MAX_JSON_ITEMS
    items (json_items), for more than MAX_NON_ASCII_BYTES of UTF-8 that is not all ASCII, and for
    nesting past the recursion limit (``[[[[...]]]]`` 100,000 deep: few items); ValueError for text
    that is not JSON. safetensors and mintpack headers (packed/format.py: its ``mint`` string too)."""
    items = json_items(text)
    if items > MAX_JSON_ITEMS:
        raise JSONRefused(f"refused unparsed: {items:,} JSON items (commas and brackets); a LoRA adapter's "
                          f"has at most {MAX_JSON_ITEMS:,} (8 a tensor)")
    if len(text) > MAX_NON_ASCII_BYTES // 4 and not text.isascii():  # a str: up to 4 bytes a character
        size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
        if size > MAX_NON_ASCII_BYTES:
            raise JSONRefused(f"refused unparsed: {size:,} bytes, not ASCII; a header with other text has at "
                              f"most {MAX_NON_ASCII_BYTES:,} (tensor names are ASCII)")
    try:
        return json.loads(text)
    except RecursionError:
        raise JSONRefused("nested too deep") from None


def read_safetensors_header(data: bytes, where: str) -> dict[str, tuple[str, list[int]]]:
    """Parse and bounds-check a safetensors buffer; return {name: (dtype, shape)}.

    Catches truncation (the header promises more bytes than the file has),
    overlapping or gapped data offsets, and shape/size disagreements, each
    with a message naming the file and tensor.
    """
    return {name: (dtype, shape) for name, (dtype, shape, _) in _checked_header(data, where).items()}


def _checked_header(data: bytes, where: str, size: int | None = None) -> dict[str, tuple[str, list[int], int]]:
    """{name: (dtype, shape, offset of its data in the file)}, checked as above. ``data`` is the
    file, or its first bytes (at least the header) when ``size`` gives the file's length."""
    size = len(data) if size is None else size
    if size < 8 or len(data) < 8:
        raise InvalidAdapter(f"{where}: truncated safetensors file ({size} bytes, no header)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > size - 8:
        raise InvalidAdapter(f"{where}: truncated or corrupt safetensors (header of {n} bytes, file of {size})")
    try:
        header = load_bounded_json(data[8:8 + n])
    except JSONRefused as exc:
        raise InvalidAdapter(f"{where}: safetensors header {exc}") from None
    except ValueError as exc:
        raise InvalidAdapter(f"{where}: corrupt safetensors header ({exc})") from None
    if not isinstance(header, dict):
        raise InvalidAdapter(f"{where}: corrupt safetensors header (not a JSON object)")
    header.pop("__metadata__", None)
    payload = size - 8 - n
    spans, out = [], {}
    for name, info in header.items():
        try:
            dtype, shape, (start, end) = info["dtype"], info["shape"], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise InvalidAdapter(f"{where}: corrupt safetensors header entry for {name!r}") from None
        if dtype not in DTYPES:
            raise InvalidAdapter(f"{where}: tensor {name!r} has dtype {dtype}; LoRA weights must be F16, BF16 or F32")
        if end - start != math.prod(shape) * DTYPES[dtype][0] or start < 0:
            raise InvalidAdapter(f"{where}: tensor {name!r} of shape {shape} does not fit its data offsets")
        spans.append((start, end, name))
        out[name] = (dtype, list(shape), 8 + n + start)
    spans.sort()
    pos = 0
    for start, end, name in spans:
        if start != pos:
            raise InvalidAdapter(f"{where}: corrupt safetensors (tensor {name!r} starts at {start}, expected {pos})")
        pos = end
    if pos != payload:
        what = "truncated" if pos > payload else "corrupt"
        raise InvalidAdapter(f"{where}: {what} safetensors (tensors need {pos} data bytes, file has {payload})")
    return out


def map_safetensors(path: str, where: str) -> dict:
    """{name: torch tensor} of a safetensors file in shared memory, every tensor a view of one
    private (copy-on-write) mapping of it: nothing is copied until the tensors are used.

    For a revision staged in /dev/shm (frontend/staged_revisions.py), whose file stays put while
    it is served: reading copied all of it into fresh memory, 41-45 ms of a 107 MB rank-64
    adapter's cold load, where mapping takes 1 ms and SGLang's q/k/v and gate/up stacking reads
    the mapping instead of the copy (1-2 ms more). The caller copies what it keeps
    (adapter_reader.own_weights), so the mapping goes once the adapter is built. The header is
    checked as read_safetensors checks it; a tensor whose offset does not suit its dtype is copied.
    """
    import torch

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 8:
            raise InvalidAdapter(f"{where}: truncated safetensors file ({size} bytes, no header)")
        mapping = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY)
    n = struct.unpack("<Q", mapping[:8])[0]
    entries = _checked_header(mapping[:8 + min(n, size - 8)], where, size)
    data = torch.frombuffer(mapping, dtype=torch.uint8)
    tensors = {}
    for name, (dtype, shape, offset) in entries.items():
        dt = getattr(torch, DTYPES[dtype][1])
        raw = data[offset:offset + DTYPES[dtype][0] * math.prod(shape)]
        tensors[name] = (raw.view(dt) if offset % DTYPES[dtype][0] == 0 else raw.clone().view(dt)).view(shape)
    return tensors


def read_safetensors(path: str, where: str) -> dict:
    """{name: torch tensor} of a safetensors file, each tensor read straight into its own memory:
    a cold load copies the file once (from the page cache, or /dev/shm for a staged revision).

    ``safetensors.torch.load(f.read())`` copied each tensor out of the bytes it had read: a
    second copy of the whole file, about a third of a cold load's time (py-spy, a rank-8
    adapter of a 2.7 GB Llama). (``load_file`` is worse: in safetensors 0.8.0 every call keeps
    about 1.8 KB for good, most of a scheduler's growth over 10^5 cold loads.) Each tensor has
    storage of its own, as before, so what SGLang replaces (it concatenates q/k/v and gate/up)
    is freed. The header is checked first (``read_safetensors_header``'s checks): a truncated
    or corrupt file, or one that changes while it is read, is an InvalidAdapter naming ``where``.
    """
    import torch

    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        head += f.read(min(n, max(size - 8, 0)))
        entries = _checked_header(head, where, size)
        tensors = {}
        for name, (dtype, shape, offset) in sorted(entries.items(), key=lambda e: e[1][2]):
            t = torch.empty(shape, dtype=getattr(torch, DTYPES[dtype][1]))
            want = t.numel() * t.element_size()
            if want and (f.tell() != offset or f.readinto(t.view(-1).view(torch.uint8).numpy()) != want):
                raise InvalidAdapter(f"{where}: {WEIGHTS} changed while it was read ({name!r})")
            tensors[name] = t
    return tensors
