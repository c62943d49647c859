"""Helpers for the catalog tests: a tiny base-model config, PEFT folders written with numpy."""

from __future__ import annotations

import json
import os

import numpy as np
from safetensors.numpy import save_file

TINY = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
    "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
    "num_key_value_heads": 2, "head_dim": 32, "vocab_size": 1000,
}
MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# (in, out) of each dense module of TINY: q 128->4*32, k/v 128->2*32, mlp 128<->256
SHAPES = {"q_proj": (128, 128), "k_proj": (128, 64), "v_proj": (128, 64), "o_proj": (128, 128),
          "gate_proj": (128, 256), "up_proj": (128, 256), "down_proj": (256, 128)}


def write_base(folder, **overrides) -> str:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump({**TINY, **overrides}, f)
    return str(folder)


def peft_tensors(rank=4, modules=MODULES, layers=2, seed=0, dtype=np.float16, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    out = {}
    for layer in range(layers):
        for m in modules:
            parent = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            fin, fout = shapes[m]
            key = f"base_model.model.model.layers.{layer}.{parent}.{m}"
            out[f"{key}.lora_A.weight"] = rng.standard_normal((rank, fin)).astype(dtype)
            out[f"{key}.lora_B.weight"] = rng.standard_normal((fout, rank)).astype(dtype)
    return out


def write_peft(folder, rank=4, modules=MODULES, seed=0, config=None, tensors=None, base_name="tiny") -> str:
    os.makedirs(folder, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": list(modules),
           "base_model_name_or_path": base_name, "task_type": "CAUSAL_LM"}
    cfg.update(config or {})
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump(cfg, f)
    save_file(tensors if tensors is not None else peft_tensors(rank, modules, seed=seed),
              os.path.join(folder, "adapter_model.safetensors"))
    return str(folder)


def written(cat) -> tuple[int, int, list]:
    """(revisions, blob rows, blob files): what a refused import must leave at zero."""
    s = cat.store.counts()
    tmp = getattr(cat.blobs, "tmp", None)  # a local blob store's partial writes (an S3 put has none)
    return s["revisions"], s["blobs"], list(cat.blobs.iter_digests()) + (os.listdir(tmp) if tmp else [])


def blob_file(cat, digest: str) -> str:
    """The local file a view links to: the blob itself in a local store, the cached download for S3."""
    return cat.blobs.path(digest) if hasattr(cat.blobs, "path") else cat.blobs.local_path(digest)


def overwrite_blob(cat, digest: str, change) -> None:
    """Replace a stored blob's bytes with ``change(bytes)`` behind the catalog's back (a corrupt store)."""
    data = change(cat.blobs.read(digest))
    if hasattr(cat.blobs, "path"):
        os.chmod(cat.blobs.path(digest), 0o644)
        with open(cat.blobs.path(digest), "wb") as f:
            f.write(data)
    else:  # S3: a plain PutObject, without the checksum S3BlobStore.put sends
        cat.blobs.client.put_object(Bucket=cat.blobs.bucket, Key=cat.blobs.key(digest), Body=data)
