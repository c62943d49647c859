"""Synthetic catalogs for benchmarks: N real, distinct, loadable LoRA adapters.

The unit is a rank-r (default 1) fp16 adapter on all seven dense modules of
every layer. For the tiny model (hidden 128, intermediate 256, 2 layers, kv
width 64) one layer holds q 128+128, k 128+64, v 128+64, o 128+128, gate
128+256, up 128+256, down 256+128 = 2,048 values, so an adapter is 4,096 fp16
values = 8 KB plus a ~3 KB safetensors header; 10^6 of them are ~11 GB.

Speed: the safetensors header is identical for every adapter (same names,
shapes, offsets), so it is built once; each adapter is that header plus its own
random payload. Adapter i's payload comes from a generator seeded by (seed,
crc32(prefix), i // 1024), row i % 1024, so the bytes depend only on (seed, prefix, i). Blobs of a batch are
written without per-file fsync, then one syncfs() makes them durable before
the batch's single SQLite transaction commits.

``shared=True`` (metadata-only scaling): every entry references the payload of
adapter 0. Entries are then NOT distinct adapters; callers must say so.
"""

from __future__ import annotations

import hashlib
import json
import time
import zlib

import numpy as np

from sglang_mint.adapters.base_model import DENSE_MODULES, BaseModel
from sglang_mint.adapters.peft import CONFIG, WEIGHTS
from sglang_mint.catalog.catalog import Catalog, content_digest
from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.catalog.progress import Progress
from sglang_mint.catalog.store import RevisionRecord

BATCH = 1024


def lora_shapes(base: BaseModel, rank: int) -> dict[str, tuple[int, int]]:
    """{safetensors key: shape} for a PEFT LoRA on every dense module of every layer."""
    out = {}
    for layer in range(base.num_hidden_layers):
        for m in DENSE_MODULES:
            parent = "self_attn" if m in ("q_proj", "k_proj", "v_proj", "o_proj") else "mlp"
            fin, fout = base.module_shape(parent, m)
            key = f"base_model.model.model.layers.{layer}.{parent}.{m}"
            out[f"{key}.lora_A.weight"] = (rank, fin)
            out[f"{key}.lora_B.weight"] = (fout, rank)
    return out


def adapter_config(base: BaseModel, rank: int, alpha: float) -> bytes:
    return json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": list(DENSE_MODULES),
        "lora_dropout": 0.0, "bias": "none", "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base.name, "base_model_identity": base.identity,
    }, indent=2, sort_keys=True).encode()


class AdapterFactory:
    """Builds adapter i's safetensors bytes: a shared header + a payload seeded by (seed, i)."""

    def __init__(self, base: BaseModel, rank: int = 1, seed: int = 0, stream: int = 0):
        from safetensors.numpy import save

        shapes = lora_shapes(base, rank)
        template = save({k: np.zeros(s, np.float16) for k, s in shapes.items()})
        n = int.from_bytes(template[:8], "little")
        self.header = template[:8 + n]
        self.numel = (len(template) - 8 - n) // 2
        self.tensor_count = len(shapes)
        self.seed, self.stream = seed, stream
        self._batch_index, self._batch = -1, None

    def payload(self, i: int) -> bytes:
        b = i // BATCH
        if b != self._batch_index:
            rng = np.random.default_rng([self.seed, self.stream, b])
            vals = rng.standard_normal((BATCH, self.numel), dtype=np.float32) * np.float32(0.02)
            self._batch, self._batch_index = vals.astype(np.float16), b
        return self.header + self._batch[i % BATCH].tobytes()


def synth(cat: Catalog, count: int, prefix: str = "synth/", start: int = 0, rank: int = 1,
          shared: bool = False, seed: int = 0, progress: bool = True) -> dict:
    """Add ``count`` adapters ``<prefix><index:07d>`` at revision 1. Returns a summary with ``mode``."""
    if count <= 0:
        raise ValueError(f"count must be positive, got {count}")
    validate_adapter_id(f"{prefix}{start:07d}")
    validate_adapter_id(f"{prefix}{start + count - 1:07d}")
    # The prefix picks the random stream, so 'a/0000001' and 'b/0000001' differ too.
    factory = AdapterFactory(cat.base, rank, seed, zlib.crc32(prefix.encode()))
    config = adapter_config(cat.base, rank, float(2 * rank))
    config_digest = cat.blobs.put(config)
    shared_files = None
    if shared:
        shared_files = {CONFIG: config_digest, WEIGHTS: cat.blobs.put(factory.payload(start))}
    weight_size = len(factory.header) + 2 * factory.numel
    t0 = time.perf_counter()
    bar = Progress(count, f"synth ({'shared-payload' if shared else 'real'})", enabled=progress)
    written = 0
    try:
        for lo in range(start, start + count, BATCH):
            hi = min(lo + BATCH, start + count)
            items = []
            for i in range(lo, hi):
                if shared:
                    files = shared_files
                else:
                    data = factory.payload(i)
                    files = {CONFIG: config_digest, WEIGHTS: cat.blobs.put(data, sync=False)}
                items.append((f"{prefix}{i:07d}", RevisionRecord(
                    "peft", rank, float(2 * rank), DENSE_MODULES, "float16", weight_size + len(config),
                    files, content_digest(files), {"synth_index": i}, 2 * factory.numel, factory.tensor_count)))
            if not shared:
                cat.blobs.sync()  # blobs durable before the metadata that references them
            cat.store.publish_many(items, time.time())
            written += len(items)
            bar.update(len(items))
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    return {
        "mode": "shared-payload" if shared else "real",
        "note": ("every entry shares ONE payload blob: metadata scaling only, not distinct adapters"
                 if shared else "every entry is a distinct, loadable adapter with its own blob"),
        "count": written, "seconds": round(seconds, 3), "rate_per_s": round(written / seconds, 1),
        "bytes_per_adapter": weight_size + len(config), "first_id": f"{prefix}{start:07d}",
        "last_id": f"{prefix}{start + count - 1:07d}",
        "payload_sha256_of_first": hashlib.sha256(factory.payload(start)).hexdigest(),
    }
