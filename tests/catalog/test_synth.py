"""Synthetic adapters are real: distinct, loadable, passing the import checks."""

import hashlib
import os

import numpy as np
from safetensors.numpy import load_file

from sglang_mint.adapters.peft import read_peft_folder
from sglang_mint.catalog import synth as synth_module
from sglang_mint.catalog.synth import synth


def test_real_mode_adapters_are_distinct_and_loadable(cat, monkeypatch):
    monkeypatch.setattr(synth_module, "BATCH", 16)  # the boundary crossed with 40 adapters, not 1,100
    rep = synth(cat, 40, progress=False)  # two batch boundaries, the last batch short
    assert rep["mode"] == "real" and rep["count"] == 40
    digests = {cat.resolve(f"synth/{i:07d}").files["adapter_model.safetensors"] for i in range(40)}
    assert len(digests) == 40
    for i in (0, 15, 16, 39):
        path = cat.resolve(f"synth/{i:07d}").local_path()
        peft = read_peft_folder(path, cat.base)  # the same checks an import gets
        assert (peft.rank, peft.dtype, len(peft.target_modules)) == (1, "float16", 7)
        tensors = load_file(os.path.join(path, "adapter_model.safetensors"))
        assert len(tensors) == 28 and all(np.isfinite(t).all() and t.std() > 0 for t in tensors.values())
    assert cat.verify()["ok"]


def test_same_index_same_bytes_other_prefix_other_bytes(cat):
    synth(cat, 3, prefix="a/", progress=False)
    synth(cat, 3, prefix="b/", progress=False)
    a = [cat.resolve(f"a/{i:07d}").files["adapter_model.safetensors"] for i in range(3)]
    b = [cat.resolve(f"b/{i:07d}").files["adapter_model.safetensors"] for i in range(3)]
    assert not set(a) & set(b)
    rep = synth(cat, 2, prefix="c/", start=1, progress=False)
    assert rep["first_id"] == "c/0000001"


def test_shared_mode_says_so_and_shares_one_blob(cat):
    rep = synth(cat, 2000, shared=True, progress=False)
    assert rep["mode"] == "shared-payload" and "not distinct" in rep["note"]
    weights = {cat.resolve(f"synth/{i:07d}").files["adapter_model.safetensors"] for i in (0, 999, 1999)}
    assert len(weights) == 1 and cat.stats()["blobs"] == 2
    digest = weights.pop()
    assert hashlib.sha256(cat.blobs.read(digest)).hexdigest() == digest
    assert cat.verify()["ok"]
