"""A safetensors header is JSON its uploader writes, parsed before anything in it is checked.

json.loads of ``{"x":[{},{},...]}`` holds about 25 bytes of Python objects per byte of it: the
100 MB header safetensors allows would take 2.5 GB of the server's frontend, per upload. The
header's items are counted first (safetensors_io.json_items: commas and brackets, at C speed), and
one with more than any LoRA adapter has is refused unparsed. A real adapter's header still parses:
a per-expert DeepSeek-V3 adapter (89,088 tensors) below.
"""

from __future__ import annotations

import mmap
import struct

import pytest
from adapter_fixtures import TINY, config_bytes
from allocation_peak import peak_of

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import check_peft_file, read_safetensors_header
from sglang_mint.adapters.safetensors_io import MAX_JSON_ITEMS, json_items

HOSTILE_BYTES = 12 << 20
# What parsing may hold beyond the header's own bytes (the file's first 8 + n bytes, sliced once).
SLACK = 1 << 20

# name -> one element of a long JSON list: 3 to 9 bytes of JSON, 25 to 29 times that in Python objects
HOSTILE = {"empty-objects": b"{}", "empty-lists": b"[]", "objects-of-lists": b'{"a":[]}'}


def header_file(body: bytes) -> bytes:
    """A safetensors file holding ``body`` as its header and no tensor data."""
    return struct.pack("<Q", len(body)) + body


def hostile(element: bytes, size: int = HOSTILE_BYTES) -> bytes:
    """``{"__metadata__":{},"x":[e,e,...]}`` of about ``size`` bytes."""
    return b'{"__metadata__":{},"x":[' + b",".join([element] * (size // (len(element) + 1))) + b"]}"


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_header_is_refused_before_it_is_parsed(kind):
    data = header_file(hostile(HOSTILE[kind]))
    peak, error = peak_of(lambda: read_safetensors_header(data, "up/adapter_model.safetensors"), InvalidAdapter)
    assert peak < len(data) + SLACK, f"{kind}: {peak / 1e6:.0f} MB held to parse a {len(data) / 1e6:.0f} MB header"
    assert error is not None and "up/adapter_model.safetensors" in str(error)
    assert f"at most {MAX_JSON_ITEMS:,}" in str(error), str(error)


def test_an_uploaded_hostile_header_is_refused_before_it_is_parsed(tmp_path):
    """The upload's own path: check_peft_file maps the received file and reads its header."""
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(header_file(hostile(HOSTILE["empty-objects"])))
    peak, error = peak_of(lambda: check_peft_file(config_bytes(), str(path), TINY, "upload"), InvalidAdapter)
    assert peak < path.stat().st_size + SLACK, f"{peak / 1e6:.0f} MB held to check a {path.stat().st_size / 1e6:.0f} MB file"
    assert error is not None and "upload/adapter_model.safetensors" in str(error), error


def test_a_header_nested_past_the_recursion_limit_is_invalid_not_a_crash():
    """100,000 brackets are few items, but json.loads raises RecursionError on them (the upload's 500)."""
    data = header_file(b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    with pytest.raises(InvalidAdapter, match="nested too deep"):
        read_safetensors_header(data, "up/adapter_model.safetensors")


def test_a_config_nested_past_the_recursion_limit_is_invalid_not_a_crash(tmp_path):
    """adapter_config.json, the upload's other JSON (at most 1 MiB): the same RecursionError."""
    deep = b'{"r":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(InvalidAdapter, match="nested too deep"):
        check_peft_file(deep, str(tmp_path / "absent.safetensors"), TINY, "upload")


def per_expert_header(layers: range, experts: int, hidden: int, inter: int, rank: int = 8) -> tuple[bytes, int]:
    """(header, data bytes) of a PEFT adapter with a LoRA pair on each expert's gate/up/down_proj, BF16,
    as PeftModel.save_pretrained writes it. DeepSeek-V3: layers 3..60 (58 MoE layers), 256 experts,
    hidden 7168, expert intermediate 2048: 89,088 tensors, a 13 MB header, 6.6 GB of data."""
    parts, offset = [b'{"__metadata__":{"format":"pt"}'], 0
    for layer in layers:
        for e in range(experts):
            for proj, (fin, fout) in (("gate_proj", (hidden, inter)), ("up_proj", (hidden, inter)),
                                      ("down_proj", (inter, hidden))):
                for ab, (rows, cols) in (("A", (rank, fin)), ("B", (fout, rank))):
                    end = offset + rows * cols * 2
                    parts.append(b',"base_model.model.model.layers.%d.mlp.experts.%d.%s.lora_%s.weight":'
                                 b'{"dtype":"BF16","shape":[%d,%d],"data_offsets":[%d,%d]}'
                                 % (layer, e, proj.encode(), ab.encode(), rows, cols, offset, end))
                    offset = end
    return b"".join(parts) + b"}", offset


def test_a_per_expert_deepseek_v3_header_is_still_read(tmp_path):
    """The real thing, offsets and all: the header in front of 6.6 GB of (sparse) tensor data, mapped
    as check_peft_file maps an upload."""
    body, data_bytes = per_expert_header(range(3, 61), 256, 7168, 2048)
    path = tmp_path / "adapter_model.safetensors"
    with open(path, "wb") as f:
        f.write(header_file(body))
        f.truncate(8 + len(body) + data_bytes)  # a hole: no disk is written
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        header = read_safetensors_header(data, "deepseek-v3")
    assert len(header) == 89_088
    assert header["base_model.model.model.layers.60.mlp.experts.255.down_proj.lora_B.weight"] == ("BF16", [7168, 8])
    assert json_items(body) < MAX_JSON_ITEMS / 2  # 8 items a tensor: 712,706


def test_the_largest_per_expert_adapters_fit_the_item_bound():
    """60 layers of 512 experts, hidden 4096: 184,320 tensors, more than any open MoE model we know of
    (Kimi K2: 60 MoE layers of 384 experts, 138,240; Qwen3-Next: 48 of 512). Counted, not parsed."""
    body, _ = per_expert_header(range(60), 512, 4096, 1024)
    assert 184_320 * 8 < json_items(body) < MAX_JSON_ITEMS


def test_a_long_non_ascii_header_is_refused_before_it_is_parsed():
    """Few items, many bytes: one string of 4-byte characters. json.loads held about 6 times such a
    header (13 MB: 75 MB), past what the item count bounds; tensor names and dtypes are ASCII, and a
    header with other characters is refused unparsed beyond a small size."""
    body = b'{"__metadata__":{"note":"' + "\U0001F600".encode() * (HOSTILE_BYTES // 4) + b'"}}'
    data = header_file(body)
    peak, error = peak_of(lambda: read_safetensors_header(data, "up/adapter_model.safetensors"), InvalidAdapter)
    assert peak < len(data) + SLACK, f"{peak / 1e6:.0f} MB held to parse a {len(data) / 1e6:.0f} MB header"
    assert error is not None and "not ASCII" in str(error), error
    small = header_file('{"__metadata__":{"note":"caf\u00e9"}}'.encode())  # a little metadata text is fine
    assert read_safetensors_header(small, "up/adapter_model.safetensors") == {}
