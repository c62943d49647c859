"""How fast does an adapter get into SGLang's LoRA host memory: PEFT folder vs packed file vs memcpy.

Question: (a) SGLang 0.5.23's own load of a PEFT folder
(``LoRAAdapter.initialize_weights``: weight iterator tensor by tensor, then
``_normalize_weights`` renames/concats) vs (b) the packed load
(``sglang_mint.sglang.packed_loader.load_packed_into``: header check against the
engine, one copy, views; the function our AROUND hook runs in its place) vs
(c) a plain memcpy of the same bytes from page cache into a fresh buffer from
the same allocator (the floor on this machine). Both (a) and (b) build the same LoRAAdapter that
``LoRAManager.load_lora_adapter`` keeps; the pool copy at first use is not
timed (identical for both on CPU). Page cache is warm for all three.

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
    return {"adapter": kind, "shape": s, "bytes": nbytes, "file_bytes": size, "tensors_packed": len(entries),
            "pack_s": round(pack_s, 3), "repeat": repeat,
            "a_sglang_peft_s": round(a, 4), "b_packed_s": round(b, 4), "c_memcpy_s": round(c, 4),
            "a_over_b": round(a / b, 2), "b_GBps": round(nbytes / b / 1e9, 3), "c_GBps": round(nbytes / c / 1e9, 3),
            "b_vs_c": round(c / b, 3), "targets": {"a_over_b": ">= 10", "b_vs_c": ">= 0.7"}}


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
