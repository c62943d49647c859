"""Block-size tables for the LoRA kernels, read from configs/kernels/*.json.

(Installed copies live in sglang_mint/kernels/configs/; see CONFIG_DIRS.)

No @triton.autotune on the serving path: a first-call autotune stalls a live
batch. Instead each launcher asks `get_config(op, **shape)` for its block
sizes. Lookup order:

1. configs/kernels/<op>__<device>.json, key "<bucket>" (see `shape_bucket`);
2. the same file's "default" entry;
3. configs/kernels/<op>__default.json, key "<bucket>", then its "default";
4. `_heuristic(op, shape)` below.

`device` is torch.cuda.get_device_name() with every non-alphanumeric run
replaced by "_" ("NVIDIA H100 80GB HBM3" -> "NVIDIA_H100_80GB_HBM3"), or
"cpu" when tensors are not on CUDA (the Triton interpreter).

Example: sgmv_shrink with K=4096, R=16, 3 slices, max segment length 1 has
bucket "K4096_R16_S3_M1"; K and M are rounded up to powers of two (M capped
at 512), so one tuned entry covers a range of shapes.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path

from ._launch import forget_plans

_HERE = Path(__file__).resolve().parent
# Where the tables are, first match wins:
#   $MINT_KERNEL_CONFIG_DIR                   (a bench run writing new tables)
#   <site-packages>/sglang_mint/kernels/configs   (pip install: setup.py maps
#                                             configs/kernels/ there)
#   <checkout>/configs/kernels                (editable install / source tree,
#                                             where this file is <checkout>/kernels/)
CONFIG_DIRS = (_HERE / "configs", _HERE.parent / "configs" / "kernels")


def find_config_dir() -> Path:
    if os.environ.get("MINT_KERNEL_CONFIG_DIR"):
        return Path(os.environ["MINT_KERNEL_CONFIG_DIR"])
    for d in CONFIG_DIRS:
        if d.is_dir():
            return d
    return CONFIG_DIRS[-1]  # missing everywhere: every lookup falls to the heuristic


CONFIG_DIR = find_config_dir()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host ints. triton.cdiv does the same through Triton's constexpr
    machinery, about 7 µs a call on a 2-core host: a launcher calls it per layer."""
    return -(-a // b)


def _next_pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def device_key(device) -> str:
    """'cpu' for non-CUDA tensors, else the normalized CUDA device name."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return "cpu"
    return _cuda_key(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _cuda_key(index: int) -> str:
    """Asked once per device: the launch path runs per layer, per forward."""
    import torch

    return re.sub(r"[^A-Za-z0-9]+", "_", torch.cuda.get_device_name(index)).strip("_")


def shape_bucket(K: int = 0, R: int = 0, S: int = 1, M: int = 0) -> str:
    """'K{pow2(K)}_R{pow2(R)}_S{S}_M{min(pow2(M), 512)}'."""
    return f"K{_next_pow2(K)}_R{_next_pow2(R)}_S{S}_M{min(_next_pow2(M), 512)}"


@functools.lru_cache(maxsize=None)
def _load_table(op: str, device: str) -> dict:
    path = CONFIG_DIR / f"{op}__{device}.json"
    if not path.exists():
        return {}
    with open(path) as f:
        return json.load(f)


def _heuristic(op: str, K: int, R: int, S: int, M: int) -> dict:
    """Defaults for a table miss.

    dot kernels need every block dim >= 16. Decode (M <= 16) uses BLOCK_M 16;
    prefill uses 64 rows so each adapter weight tile is reused 64 times.
    SPLIT_K is the most splits a shrink may use (see `split_for`).
    """
    r_blk = max(16, min(64, _next_pow2(R)))
    m_blk = 16 if M <= 16 else (32 if M <= 64 else 64)
    n_shrink = max(16, min(64, _next_pow2(S * R)))
    if op == "sgmv_shrink":  # out = S*R columns, reduce over K
        return {"BLOCK_M": m_blk, "BLOCK_N": n_shrink, "BLOCK_K": 128 if M <= 16 else 64,
                "SPLIT_K": 16, "num_warps": 4, "num_stages": 2}
    if op == "sgmv_expand":  # out = slice width, reduce over R
        return {"BLOCK_M": m_blk, "BLOCK_N": 128 if M <= 16 else 64,
                "BLOCK_K": r_blk, "num_warps": 4, "num_stages": 2}
    if op == "bgmv_fused":  # one (token, slice, N-chunk) per program
        return {"BLOCK_R": r_blk, "BLOCK_K": 256, "BLOCK_N": 128,
                "CHUNK_N": 1024, "num_warps": 4, "num_stages": 2}
    if op == "moe_lora_shrink":
        return {"BLOCK_M": m_blk, "BLOCK_N": r_blk, "BLOCK_K": 64,
                "num_warps": 4, "num_stages": 2}
    if op == "moe_lora_expand":
        return {"BLOCK_M": m_blk, "BLOCK_N": 64, "BLOCK_K": r_blk,
                "num_warps": 4, "num_stages": 2}
    raise KeyError(f"no heuristic for op {op!r}")


def split_for(cfg: dict, K: int, tiles: int, device) -> int:
    """Splits of K for a shrink of `tiles` output tiles: enough CTAs for two waves.

    At most cfg["SPLIT_K"], never an empty split, a power of two. Example on an
    H200 (132 SMs): llama3-8B qkv decode, 8 slots x 1 tile -> 32 wanted, capped
    at SPLIT_K 16 -> 128 CTAs of 256 K columns each.
    """
    cap = min(int(cfg.get("SPLIT_K", 1)), -(-K // cfg["BLOCK_K"]))
    want = -(-2 * sm_count(device) // max(1, tiles))
    split = 1
    while split * 2 <= min(cap, _next_pow2(want)):
        split *= 2
    return split


@functools.lru_cache(maxsize=None)
def _sm_count(kind: str, index: int) -> int:
    import torch

    if kind != "cuda":
        return 4  # the interpreter: small enough that tests reach SPLIT_K > 1
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(device) -> int:
    import torch

    device = torch.device(device)
    return _sm_count(device.type, device.index or 0)


_CONFIGS: dict[tuple, dict] = {}   # (op, device, K, R, S, M) -> config: one dict access per launch


def get_config(op: str, device, *, K: int = 0, R: int = 0, S: int = 1, M: int = 0) -> dict:
    """Block sizes for `op` on `device` at this shape (shared: do not modify it)."""
    key = (op, device, K, R, S, M)
    cfg = _CONFIGS.get(key)
    if cfg is None:
        if len(_CONFIGS) > 65536:  # prefill segment lengths vary without end
            _CONFIGS.clear()
        cfg = _CONFIGS[key] = _lookup(op, device_key(device), shape_bucket(K, R, S, M), K, R, S, M)
    return cfg


def _lookup(op: str, device: str, bucket: str, K: int, R: int, S: int, M: int) -> dict:
    for dev in (device, "default"):
        table = _load_table(op, dev)
        configs = table.get("configs", {})
        if bucket in configs:
            return dict(configs[bucket])
        if "default" in table:
            return dict(table["default"])
    return _heuristic(op, K, R, S, M)


def reload_tables() -> None:
    """Forget every table read and every lookup made (after CONFIG_DIR changes), and the
    launchers' plans made from them."""
    _load_table.cache_clear()
    _CONFIGS.clear()
    forget_plans()


def launch_kwargs(cfg: dict) -> dict:
    """num_warps / num_stages from a config, for kernel[grid](..., **kw)."""
    return {k: cfg[k] for k in ("num_warps", "num_stages") if k in cfg}
