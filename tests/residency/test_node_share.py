"""The files one TP group shares (residency/node_share.py): what a failed write leaves in /dev/shm.

Real files in a temporary folder; the adapter is a stand-in with the attributes node_share walks
(``layers[i].weights``, ``embedding_layers``, ``added_tokens_embeddings``). Sharing itself, rank 0
writing and the others mapping, is tested end to end by tests/sglang/test_parallel.py.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch

from sglang_mint.residency.node_share import NodeShare


def adapter(*tensors):
    return SimpleNamespace(config=None, layers=[SimpleNamespace(weights={f"w{i}": t for i, t in enumerate(tensors)})],
                           embedding_layers={}, added_tokens_embeddings={})


def test_a_write_that_fails_midway_leaves_nothing_behind(tmp_path):
    share = NodeShare(str(tmp_path / "group"), rank=0)
    unreadable = torch.empty(4, device="meta")  # its bytes cannot be read: the write fails after the first tensor
    with pytest.raises(Exception):
        share.publish(7, adapter(torch.ones(4), unreadable))
    share.publish_failure(7, "read 7 failed")
    share.drop(7)  # what rank 0 does once the ranks agree the read failed
    assert os.listdir(share.folder) == []


def test_a_shared_adapter_is_read_back_by_another_rank(tmp_path):
    share = NodeShare(str(tmp_path / "group"), rank=0)
    weights = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    share.publish(1, adapter(weights))
    attached = NodeShare(share.folder, rank=1).attach(1, lambda config: adapter(torch.zeros(3, 4)), timeout=5)
    assert torch.equal(attached.layers[0].weights["w0"], weights)
    share.drop(1)
    assert os.listdir(share.folder) == []
