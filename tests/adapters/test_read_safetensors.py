"""A cold load reads an adapter's weights with one copy (adapters/peft.py: read_safetensors), or,
for a revision staged in shared memory, maps them (map_safetensors) and copies only what SGLang
does not stack (sglang/adapter_reader.own_weights)."""

from __future__ import annotations

import struct
import tracemalloc
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load, save_file

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import map_safetensors, read_safetensors
from sglang_mint.sglang.adapter_reader import own_weights

READERS = pytest.mark.parametrize("reader", [read_safetensors, map_safetensors])


@pytest.fixture
def weights(tmp_path):
    gen = torch.Generator().manual_seed(0)
    tensors = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_{ab}.weight":
               torch.randn(*((4, 77) if ab == "A" else (199, 4)), generator=gen) for i in range(3) for ab in "AB"}
    tensors["half"] = torch.randn(3, 5, generator=gen).to(torch.float16)  # 30 bytes: what follows is 2-aligned
    tensors["bf16"] = torch.randn(7, generator=gen).to(torch.bfloat16)
    tensors["empty"] = torch.empty(0, 4)
    path = tmp_path / "adapter_model.safetensors"
    save_file(tensors, path)
    return path, tensors


@READERS
def test_equals_safetensors_own_reader_tensor_for_tensor(weights, reader):
    path, tensors = weights
    got, theirs = reader(str(path), "x"), load(path.read_bytes())
    assert set(got) == set(theirs) == set(tensors)
    for name, t in theirs.items():
        assert got[name].dtype == t.dtype and got[name].shape == t.shape
        assert torch.equal(got[name], t), name
    assert not torch.equal(got["half"], torch.zeros_like(got["half"]))  # fresh random data, not a blank


def test_each_tensor_has_storage_of_its_own(weights):
    """SGLang concatenates q/k/v and gate/up into new tensors and drops the parts: a part that was a
    view of one file-sized buffer would keep the whole buffer alive in every resident adapter."""
    got = read_safetensors(str(weights[0]), "x")
    storages = {t.untyped_storage().data_ptr() for t in got.values() if t.numel()}
    assert len(storages) == sum(1 for t in got.values() if t.numel())
    assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in got.values())


def test_a_tensor_kept_alone_holds_its_own_bytes_not_the_file(tmp_path):
    """Views of one buffer (torch.frombuffer over the file read at once) pass the storage checks
    above, but each keeps the whole buffer alive: here, keeping the smallest tensor would hold the
    4 MB file. Python-allocated buffers are what tracemalloc sees; torch's own allocations are not."""
    path = tmp_path / "adapter_model.safetensors"
    save_file({"big": torch.randn(1024, 1024), "small": torch.randn(4)}, path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        small = read_safetensors(str(path), "x")["small"]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert small.shape == (4,)
    assert held < 256 << 10, f"{held} bytes of Python buffers held by one 16-byte tensor"


@pytest.mark.parametrize("change, message", [
    (lambda b: b[:-3], "truncated safetensors (tensors need"),
    (lambda b: b + b"\0", "corrupt safetensors (tensors need"),
    (lambda b: b[:5], "truncated safetensors file (5 bytes, no header)"),
    (lambda b: b"", "truncated safetensors file (0 bytes, no header)"),
    (lambda b: struct.pack("<Q", 10**12) + b[8:], "header of 1000000000000 bytes"),
    (lambda b: b[:8] + b"!" + b[9:], "corrupt safetensors header"),
])
@READERS
def test_a_damaged_file_is_an_invalid_adapter_naming_it(weights, tmp_path, change, message, reader):
    path = tmp_path / "damaged.safetensors"
    path.write_bytes(change(weights[0].read_bytes()))
    with pytest.raises(InvalidAdapter, match="^adapter acme/bot revision 3: ") as e:
        reader(str(path), "adapter acme/bot revision 3")
    assert message in str(e.value)


def test_a_mapped_file_is_viewed_not_copied_and_its_writes_stay_private(weights):
    path, tensors = weights
    got = map_safetensors(str(path), "x")
    storages = {t.untyped_storage().data_ptr() for t in got.values() if t.numel()}
    assert len(storages) == 1  # one mapping, no copy
    before = path.read_bytes()
    got["half"].mul_(2)  # SGLang may scale in place: copy-on-write, the staged file is unchanged
    assert path.read_bytes() == before and not torch.equal(got["half"], tensors["half"])


def test_own_weights_copies_what_still_views_the_mapping(weights):
    """What SGLang stacked is new memory and stays; what it kept as it was views the mapping and is
    copied, so the adapter holds no view of the file (that would keep all of it mapped)."""
    path, tensors = weights
    got = map_safetensors(str(path), "x")
    qkv = torch.cat([got[k] for k in sorted(got) if k.endswith("lora_A.weight")])  # stacked: new memory
    layer = SimpleNamespace(weights={"qkv_proj.lora_A": qkv, "half": got["half"], "bf16": got["bf16"]})
    own_weights(SimpleNamespace(layers=[layer]), got)
    mapping = got["half"].untyped_storage().data_ptr()
    assert all(t.untyped_storage().data_ptr() != mapping for t in layer.weights.values())
    assert layer.weights["qkv_proj.lora_A"] is qkv
    assert torch.equal(layer.weights["half"], tensors["half"]) and torch.equal(layer.weights["bf16"], tensors["bf16"])
    assert layer.weights["half"].untyped_storage().nbytes() == tensors["half"].numel() * 2  # its bytes, not the file
