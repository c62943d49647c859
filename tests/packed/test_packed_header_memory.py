"""A packed header is parsed twice: the safetensors header, then the "mint" string inside it.

Both are JSON an uploader writes. decode_header counts each one's items before parsing it
(safetensors_io.json_items) and refuses more than any LoRA adapter has, so neither parse can hold
25 times its bytes in Python objects (``[{},{},...]``). The mint string is counted on its own: its
commas may be ``\\u002c`` escapes, which the first count does not see. A real adapter's packed
header still decodes: a per-expert DeepSeek-V3 adapter below, its parts not even collapsed.
"""

from __future__ import annotations

import json
import struct

import pytest
from allocation_peak import peak_of

from sglang_mint.adapters.safetensors_io import MAX_JSON_ITEMS
from sglang_mint.packed.format import FORMAT_TAG, MAX_HEADER, PackedError, TensorEntry, decode_header, encode_header

HOSTILE_BYTES = 12 << 20
MINT = {"version": 1, "rank": 8, "dtype": "BF16", "tensors": {}}


def packed(header: dict | bytes) -> bytes:
    """A packed file of ``header`` and no tensor data."""
    body = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(body)) + body


def meta(mint: str) -> bytes:
    return b'"__metadata__":{"mint_format":"%s","mint":"%s"}' % (FORMAT_TAG.encode(), mint.encode())


def test_a_hostile_header_is_refused_before_it_is_parsed():
    """4 M empty objects in 12 MB: 316 MB once parsed."""
    mint = json.dumps(json.dumps(MINT))[1:-1]
    data = packed(b"{" + meta(mint) + b',"x":[' + b",".join([b"{}"] * (HOSTILE_BYTES // 3)) + b"]}")
    peak, error = peak_of(lambda: decode_header(data, len(data), "up/adapter.mintpack"), PackedError)
    assert peak < len(data) + (1 << 20), f"{peak / 1e6:.0f} MB held to decode a {len(data) / 1e6:.0f} MB header"
    assert error is not None and f"at most {MAX_JSON_ITEMS:,}" in str(error), error


def test_a_hostile_mint_string_is_refused_before_it_is_parsed():
    """``{}\\u002c`` 1.5 M times: each comma is an escape inside the mint string, so the header's own
    count sees 1.5 M items (under the bound) and the mint string holds 3 M (over it)."""
    n = MAX_JSON_ITEMS * 3 // 4
    mint = json.dumps(MINT)[:-1] + ',"x":[' + "{}\\u002c" * n + "{}]}"
    data = packed(b"{" + meta(mint.replace('"', '\\"')) + b"}")
    peak, error = peak_of(lambda: decode_header(data, len(data), "up/adapter.mintpack"), PackedError)
    # the header's bytes, json.loads' str of them, the mint string they hold (3/8 as long): 29 MB, not 113
    assert peak < 2.5 * len(data) + (1 << 20), f"{peak / 1e6:.0f} MB held to decode a {len(data) / 1e6:.0f} MB header"
    assert error is not None and "mint metadata" in str(error) and f"at most {MAX_JSON_ITEMS:,}" in str(error), error


@pytest.mark.parametrize("where", ["header", "mint"])
def test_nesting_past_the_recursion_limit_is_a_packed_error_not_a_crash(where):
    deep = "[" * 100_000 + "]" * 100_000
    mint = json.dumps(MINT)[:-1] + (f',"x":{deep}}}' if where == "mint" else "}")
    body = b"{" + meta(mint.replace('"', '\\"')) + (b',"x":' + deep.encode() if where == "header" else b"") + b"}"
    with pytest.raises(PackedError, match="nested too deep"):
        decode_header(packed(body), len(packed(body)), "up/adapter.mintpack")


def deepseek_v3_packed_header() -> tuple[bytes, int]:
    """(the packed header, data bytes) of a rank-8 per-expert DeepSeek-V3 adapter (MoE layers 3..60, 256
    experts, hidden 7168, expert intermediate 2048) as the converter would write it were _collapse unable
    to merge its per-expert parts: 89,088 parts listed one by one, a 13 MB header (collapsed, the
    converter writes 0.43 MB). Stored tensors: experts.gate_up_proj and experts.down_proj, A and B."""
    E, R, H, I = 256, 8, 7168, 2048
    entries, tensors, pos = [], {}, 0
    for layer in range(3, 61):
        pre = f"base_model.model.model.layers.{layer}.mlp.experts."
        for fused, slices, (fin, fout) in (("gate_up_proj", 2, (H, 2 * I)), ("down_proj", 1, (I, H))):
            for ab, shape in (("A", [E, slices * R, fin]), ("B", [E, fout, R])):
                name = f"{pre}{fused}.lora_{ab}.weight"
                size = E * shape[1] * shape[2] * 2
                entries.append(TensorEntry(name, "BF16", shape, pos, pos + size))
                pos += size
                sources = ("gate_proj", "up_proj") if slices == 2 else ("down_proj",)
                tensors[name] = {"slices": slices, "parts": [
                    {"src": f"{pre}{e}.{src}.lora_{ab}.weight", "expert": e, "layout": "plain",
                     "box": [[k * R, (k + 1) * R], [0, fin]] if ab == "A" else [[k * I, (k + 1) * I], [0, R]]}
                    for e in range(E) for k, src in enumerate(sources)]}
    head = encode_header(entries, {**MINT, "tensors": tensors, "base": {"model_type": "deepseek_v3",
                                                                          "num_experts": E}})
    return head, pos


def test_a_per_expert_deepseek_v3_packed_header_still_decodes():
    head, data_bytes = deepseek_v3_packed_header()
    assert len(head) < MAX_HEADER / 4
    start, entries, mint = decode_header(head, len(head) + data_bytes, "deepseek-v3")
    assert start == len(head) and len(entries) == 58 * 4
    assert sum(len(t["parts"]) for t in mint["tensors"].values()) == 89_088
