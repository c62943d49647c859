"""Which dense LoRA kernels `--lora-backend mint` runs per shape class: ours or SGLang's.

A measured table decides, never a request: bench/gpu/routes.py turns a
bench/kernel_bench.py run into configs/kernels/routes__<device>.json, one entry
per shape class, and the backend reads it once per class.

    {"device": "NVIDIA_H200", "git_commit": "7bc365c", "source": "kernel_bench_run1.jsonl",
     "op": "routes", "README": "...",
     "routes": {"S3_K4096_R16_decode": "sglang_triton", "S1_K4096_R16_prefill": "mint", ...}}

A shape class is `route_key(S, K, R, mode)`: S stacked slices (qkv 3, gate_up 2,
MLA q_a + kv_a 2, a single projection 1), the input width K and the max rank R
(b.shape[-1]) each rounded up to a power of two, and the batch form: "decode"
is the per-token LoraBatch (`batch.is_bgmv`), "prefill" the segment form.
Example: llama3-8B's qkv, K 4096, rank 16, decode -> "S3_K4096_R16_decode"; its
down projection, K 14336, rank 12, prefill -> "S1_K16384_R16_prefill".

A key missing from the table means "mint"; a device without a table gets our
kernels everywhere. The file is found where the block-size tables are
(`_config.CONFIG_DIR`, $MINT_KERNEL_CONFIG_DIR first). This package never
imports sglang: "sglang_triton" is only a name here; the backend
(sglang_mint/sglang/mint_backend.py) maps it onto TritonLoRABackend's methods.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import torch

from . import _config, dispatch
from ._config import _next_pow2, device_key

MINT = "mint"
SGLANG_TRITON = "sglang_triton"
CHOICES = (MINT, SGLANG_TRITON)
MODES = ("decode", "prefill")


def route_key(S: int, K: int, R: int, mode: str) -> str:
    """'S{S}_K{pow2 K}_R{pow2 R}_{mode}', e.g. (3, 4000, 12, "decode") -> 'S3_K4096_R16_decode'."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    return f"S{int(S)}_K{_next_pow2(K)}_R{_next_pow2(R)}_{mode}"


def device_name_key(name: str) -> str:
    """A device name as `_config.device_key` spells it: 'NVIDIA H200' -> 'NVIDIA_H200'."""
    return re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")


def table_file(dev_key: str) -> Path:
    """configs/kernels/routes__<device key>.json (in the current config dir)."""
    return Path(_config.CONFIG_DIR) / f"routes__{dev_key}.json"


@functools.lru_cache(maxsize=None)
def _table(dev_key: str) -> dict | None:
    """{key: choice} of this device's table, or None when it has none. Read once."""
    path = table_file(dev_key)
    if not path.exists():
        return None
    with open(path) as f:
        routes = json.load(f).get("routes", {})
    bad = {k: v for k, v in routes.items() if v not in CHOICES}
    if bad:
        raise ValueError(f"{path}: routes must be one of {CHOICES}; got {bad}")
    return dict(routes)


def clear_cache() -> None:
    """Forget the tables read so far (tests that write one to a temp dir)."""
    _table.cache_clear()


def _key_of(device) -> str:
    """A torch device (or "cuda:0", "cpu") -> its device key; a device key stays as it is."""
    if isinstance(device, str):
        try:
            torch.device(device)
        except RuntimeError:
            return device  # already a key: "NVIDIA_H200"
    return device_key(device)


def has_table(device) -> bool:
    """Whether `device` (a torch device, or a device key like 'NVIDIA_H200') has a table."""
    return _table(_key_of(device)) is not None


def route_for(device, S: int, K: int, R: int, mode: str) -> str:
    """"mint" or "sglang_triton" for this shape class on `device`; "mint" when unmeasured."""
    table = _table(_key_of(device))
    if not table:
        return MINT
    return table.get(route_key(S, K, R, mode), MINT)


def takes_sglang_triton(decided: dict, device, method: str, x: torch.Tensor, S: int, K: int, R: int,
                        per_token: bool) -> bool:
    """True: the backend's ``method`` runs SGLang's Triton kernels for this call.

    Only where Triton runs at all (CUDA, or the interpreter in tests): the CPU path
    without the interpreter is our torch reference whatever a table says. Decided
    once per (method, S, K, R, per_token) into ``decided``, one dict lookup afterwards;
    e.g. ("qkv", 3, 4096, 16, True) on CUDA with the table above -> True ("S3_K4096_R16_decode").
    """
    key = (method, S, K, R, per_token)
    hit = decided.get(key)
    if hit is None:
        mode = "decode" if per_token else "prefill"
        hit = decided[key] = dispatch.use_triton(x) and route_for(device, S, K, R, mode) == SGLANG_TRITON
    return hit


def summary(device) -> str:
    """One line for the log: where the routes come from, or that there are none."""
    dev = _key_of(device)
    table = _table(dev)
    if table is None:
        return f"no measured table for {dev}: our kernels everywhere"
    n = sum(v == SGLANG_TRITON for v in table.values())
    return f"routes from {table_file(dev)} ({n} shape classes to SGLang's Triton kernels)"
