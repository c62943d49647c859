"""What one adapter costs the host budget (residency.adapter_host_bytes): each storage once."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from sglang_mint.residency.host_bytes import ADAPTER_OVERHEAD_BYTES, TENSOR_OVERHEAD_BYTES, adapter_host_bytes


def adapter_of(layers: list[dict]) -> SimpleNamespace:
    return SimpleNamespace(layers=[SimpleNamespace(weights=w) for w in layers], embedding_layers={},
                           added_tokens_embeddings={})


def test_views_of_one_buffer_count_the_buffer_once():
    # a packed adapter: every tensor is a view of one page-aligned buffer (packed/reader.py)
    buffer = torch.empty(64 * 1024, dtype=torch.uint8)
    views = {f"t{i}": buffer[i * 4096:(i + 1) * 4096].view(torch.float32) for i in range(16)}
    got = adapter_host_bytes(adapter_of([views]))
    assert got == ADAPTER_OVERHEAD_BYTES + 16 * TENSOR_OVERHEAD_BYTES + 64 * 1024


def test_separate_tensors_each_count():
    weights = {"a": torch.zeros(10, 10), "b": torch.zeros(3)}  # 400 B and 12 B, 64-byte rounded
    got = adapter_host_bytes(adapter_of([weights, {}]))
    assert got == ADAPTER_OVERHEAD_BYTES + 2 * TENSOR_OVERHEAD_BYTES + 448 + 64
