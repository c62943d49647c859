"""How fast does an adapter get into SGLang's LoRA host memory: PEFT folder vs packed file vs memcpy.

Question: (a) SGLang 0.5.23's own load of a PEFT folder
(``LoRAAdapter.initialize_weights``: weight iterator tensor by tensor, then
``_normalize_weights`` renames/concats) vs (b) the packed load
(``sglang_mint.sglang.packed_loader.load_packed_into``: header check against the
engine, one copy, views; the function our AROUND hook runs in its place) vs
(c) a plain memcpy of the same bytes from page cache into a fresh buffer from
the same allocator (the floor on this machine). Both (a) and (b) build the same LoRAAdapter that
``LoRAManager.load_lora_adapter`` keeps. Page cache is warm for all three.

Then the pool fill at first use (``LoRAMemoryPool.load_lora_weight_to_buffer``
into a real host pool on CPU, sglang_mint.sglang.standin_pool; max rank = the
adapter's, bf16): (d) SGLang's own fill of the adapter from (a) vs (e) ours,
``sglang_mint.sglang.packed_pool``, of the adapter from (b), with the number of
tensor copies into the pool each makes (SGLang: its ``copy_weight_into_buffer``
calls; ours: its copies, a scaled MoE B written by ``torch.mul(out=)``
counting as one) and a check that both pools end bit-identical. Ours is timed including its fill plan (what a first fill pays).

Shapes: an MoE adapter (48 layers x 128 experts x gate/up/down, per-expert
PEFT keys, hidden 256, expert intermediate 128, rank 8, bf16, about 113 MB)
and a dense 7B-like one (32 layers, hidden 4096, intermediate 11008,
q/k/v/o/gate/up/down, rank 16, bf16, about 80 MB).

    python bench/load_bench.py [--repeat 3] [--only moe|dense]
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import statistics
import sys
import tempfile
import time

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import append_result  # noqa: E402

SHAPES = {
    "moe": dict(model_type="qwen3_moe", layers=48, hidden=256, inter=128, experts=128, rank=8, heads=4, kv_heads=2),
    "dense": dict(model_type="llama", layers=32, hidden=4096, inter=11008, experts=0, rank=16, heads=32, kv_heads=32),
}


def write_peft(folder: str, s: dict) -> None:
    g = torch.Generator().manual_seed(0)
    r, h, i = s["rank"], s["hidden"], s["inter"]
    kv = s["kv_heads"] * h // s["heads"]
    t = {}

    def lora(name, din, dout):
        t[name + ".lora_A.weight"] = torch.randn(r, din, generator=g).to(torch.bfloat16)
        t[name + ".lora_B.weight"] = torch.randn(dout, r, generator=g).to(torch.bfloat16)

    for layer in range(s["layers"]):
        pre = f"base_model.model.model.layers.{layer}."
        if s["experts"]:
            for e in range(s["experts"]):
                for proj, din, dout in (("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)):
                    lora(f"{pre}mlp.experts.{e}.{proj}", din, dout)
        else:
            for proj, din, dout in (("q_proj", h, h), ("k_proj", h, kv), ("v_proj", h, kv), ("o_proj", h, h)):
                lora(f"{pre}self_attn.{proj}", din, dout)
            for proj, din, dout in (("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h)):
                lora(f"{pre}mlp.{proj}", din, dout)
    os.makedirs(folder, exist_ok=True)
    save_file(t, os.path.join(folder, "adapter_model.safetensors"))
    targets = ["gate_proj", "up_proj", "down_proj"] + ([] if s["experts"] else ["q_proj", "k_proj", "v_proj", "o_proj"])
    with open(os.path.join(folder, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": targets}, f)


def hf_config(s: dict):
    from transformers import LlamaConfig, Qwen3MoeConfig

    common = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                  num_key_value_heads=s["kv_heads"], vocab_size=1024)
    if s["experts"]:
        return Qwen3MoeConfig(**common, moe_intermediate_size=s["inter"], num_experts=s["experts"],
                              num_experts_per_tok=2, mlp_only_layers=[])
    return LlamaConfig(**common, intermediate_size=s["inter"])


def sglang_adapter(folder: str, cfg):
    from sglang.srt.configs.load_config import LoadConfig
    from sglang.srt.lora.lora import LoRAAdapter
    from sglang.srt.lora.lora_config import LoRAConfig

    return LoRAAdapter("bench", LoRAConfig(folder), cfg, LoadConfig(), lora_backend=None)


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def memcpy_from_page_cache(path: str, offset: int, nbytes: int) -> None:
    dst = torch.empty(nbytes, dtype=torch.uint8).numpy()  # same allocator as the packed reader's buffer
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        src = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset)
        np.copyto(dst, src)
        del src


def run(kind: str, repeat: int, root: str) -> dict:
    from sglang.srt.lora.lora import LoRAAdapter

    from sglang_mint.packed import PACKED_FILE
    from sglang_mint.packed.convert import pack_folder
    from sglang_mint.packed.reader import read_header
    from sglang_mint.sglang.packed_loader import load_packed_into

    s = SHAPES[kind]
    peft, packed = os.path.join(root, kind + "-peft"), os.path.join(root, kind + "-packed")
    write_peft(peft, s)
    t0 = time.perf_counter()
    pack_folder(peft, packed)
    pack_s = time.perf_counter() - t0
    path = os.path.join(packed, PACKED_FILE)
    data_start, entries, _, size = read_header(path)
    cfg = hf_config(s)
    for p in (path, os.path.join(peft, "adapter_model.safetensors")):  # warm the page cache
        with open(p, "rb") as f:
            while f.read(1 << 24):
                pass
    native = LoRAAdapter.initialize_weights  # SGLang's own (no hooks applied in this process)
    import sglang.srt.model_loader.loader as loader

    class Defaults:  # no server in this process: SGLang's defaults for the options the loader reads
        weight_loader_disable_mmap = False
        model_checksum = None

        def __getattr__(self, name):
            return None

    loader.get_server_args = lambda: None
    loader.get_model = Defaults

    a = timed(lambda: native(sglang_adapter(peft, cfg)), repeat)
    b = timed(lambda: load_packed_into(sglang_adapter(packed, cfg), path), repeat)
    c = timed(lambda: memcpy_from_page_cache(path, data_start, size - data_start), repeat)
    # the two paths build the same weights
    x, y = sglang_adapter(peft, cfg), sglang_adapter(packed, cfg)
    native(x)
    load_packed_into(y, path)
    import re

    for lx, ly in zip(x.layers, y.layers):  # native keeps per-expert 2D keys; packed has them as 3D [E, ...]
        for k, v in lx.weights.items():
            m = re.search(r"\.experts\.(\d+)\.", k)
            w = ly.weights[k.replace(m.group(0), ".experts.")][int(m.group(1))] if m else ly.weights[k]
            assert torch.equal(v, w), k
    nbytes = size - data_start
    fill = pool_fill(s, cfg, x, y, repeat)
    return {**fill, "adapter": kind, "shape": s, "bytes": nbytes, "file_bytes": size, "tensors_packed": len(entries),
            "pack_s": round(pack_s, 3), "repeat": repeat,
            "a_sglang_peft_s": round(a, 4), "b_packed_s": round(b, 4), "c_memcpy_s": round(c, 4),
            "a_over_b": round(a / b, 2), "b_GBps": round(nbytes / b / 1e9, 3), "c_GBps": round(nbytes / c / 1e9, 3),
            "b_vs_c": round(c / b, 3), "targets": {"a_over_b": ">= 10", "b_vs_c": ">= 0.7"}}


def pool_fill(s: dict, cfg, native_adapter, packed_adapter, repeat: int) -> dict:
    from sglang.srt.lora import mem_pool

    from sglang_mint.sglang.packed_pool import load_lora_weight_to_buffer as ours
    from sglang_mint.sglang.standin_pool import pools_equal, standin_base_and_modules, standin_pool, tp1

    targets = {"gate_up_proj", "down_proj"} | (set() if s["experts"] else {"qkv_proj", "o_proj"})
    base, modules = standin_base_and_modules(cfg, targets)
    original = mem_pool.LoRAMemoryPool.load_lora_weight_to_buffer  # not hooked in this process
    copy = mem_pool.copy_weight_into_buffer
    counts = {}

    def counting(key):
        def fn(view, weight):
            counts[key] = counts.get(key, 0) + 1
            copy(view, weight)
        return fn

    with tp1():
        theirs_pool = standin_pool(cfg, base, s["rank"], targets, dtype=torch.bfloat16)
        ours_pool = standin_pool(cfg, base, s["rank"], targets, dtype=torch.bfloat16)

        def sglang_fill():
            original(theirs_pool, "a", 0, native_adapter, modules, None, None)

        def packed_fill():
            packed_adapter.__dict__.pop("_mint_pool_plan", None)  # plan included, as on a first fill
            ours(original, ours_pool, "a", 0, packed_adapter, modules, None, None)

        for key, fn in (("d", sglang_fill), ("e", packed_fill)):
            mem_pool.copy_weight_into_buffer = counting(key)
            try:
                fn()
            finally:
                mem_pool.copy_weight_into_buffer = copy
        if "pool_fill" not in packed_adapter.mint_packed:
            raise RuntimeError("the packed fill fell back to SGLang's path")
        diff = pools_equal(theirs_pool, ours_pool)
        if diff:
            raise RuntimeError(f"pools differ after the fills: {diff[:5]}")
        # The fills are short and CPU-bound: on a shared 2-core machine one descheduled OpenMP thread
        # stalls a whole op (measured 0.07 s to 1.5 s for the same fill). The minimum is the fill's own
        # cost; the median is reported beside it. The two fills alternate so both see the same load.
        d_all, e_all = [], []
        for _ in range(repeat):
            d_all.append(timed(sglang_fill, 1))
            e_all.append(timed(packed_fill, 1))
        d, e = min(d_all), min(e_all)
    pool_bytes = sum(t[0].numel() * t.element_size() for bufs in (ours_pool.A_buffer, ours_pool.B_buffer)
                     for layers in bufs.values() for t in layers)
    return {"pool_slot_bytes": pool_bytes, "d_sglang_fill_s": round(d, 4), "e_packed_fill_s": round(e, 4),
            "d_over_e": round(d / e, 2), "d_median_s": round(statistics.median(d_all), 4),
            "e_median_s": round(statistics.median(e_all), 4), "fill_timing": f"min of {repeat}, alternating", "d_copies": counts["d"],
            "e_copies": packed_adapter.mint_packed["pool_fill"]["copies"],
            "e_zero_fills": packed_adapter.mint_packed["pool_fill"]["zero_fills"], "pools_bit_identical": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", choices=list(SHAPES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mint-load-bench-") as root:
        for kind in [args.only] if args.only else list(SHAPES):
            rec = append_result("load_bench", run(kind, args.repeat, root))
            print(json.dumps({k: v for k, v in rec.items() if k not in ("machine", "shape")}))


if __name__ == "__main__":
    main()
