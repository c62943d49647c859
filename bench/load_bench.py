"""How fast does an adapter get into SGLang's LoRA host memory: PEFT folder vs packed file vs memcpy.

Question: (a) SGLang 0.5.23's own load of a PEFT folder
(``LoRAAdapter.initialize_weights``: weight iterator tensor by tensor, then
``_normalize_weights`` renames/concats), on the path SGLang takes by default
for a safetensors folder (no --weight-loader-* flags: the buffered
multi-thread safetensors iterator over mmap, so tensors it does not concat
stay views of the page cache until the pool fill reads them) vs (b) the packed load
(``sglang_mint.sglang.packed_loader.load_packed_into``: header check against the
engine, one copy, views; the function our AROUND hook runs in its place) vs
(c) a plain memcpy of the same bytes from page cache into a fresh buffer from
the same allocator (the floor on this machine). Both (a) and (b) build the same LoRAAdapter that
``LoRAManager.load_lora_adapter`` keeps. Page cache is warm for all three.

Then the pool fill at first use (``LoRAMemoryPool.load_lora_weight_to_buffer``
into a real host pool on CPU, sglang_mint.dev.standin_pool; max rank = the
adapter's, bf16): (d) SGLang's own fill of the adapter from (a) vs (e) ours,
``sglang_mint.sglang.packed_pool``, of the adapter from (b), with the number of
tensor copies into the pool each makes (SGLang: its ``copy_weight_into_buffer``
calls; ours: its copies, a scaled MoE B written by ``torch.mul(out=)``
counting as one) and a check that both pools end bit-identical. Ours is timed including its fill plan (what a first fill pays).
Because (a) defers part of its copying to (d) (mmap views), the like-for-like
end-to-end figure is folder/file -> host pool slot: (f) = (a) then (d) vs
(g) = (b) then (e), timed as one step.

Statistic, everywhere: each round times every path once (the order reversed
every other round, so load on the shared 2-core machine lands on all alike);
each figure is the median over the rounds with the min beside it; ratios are
of medians, with the ratio of mins beside. Targets (kept from the first
version of this script): packed load >= 10x faster than SGLang's default
loader (a/b), packed at >= 0.7 of memcpy (c/b); the pool fill and the
end-to-end figure have no stated target.

Shapes: an MoE adapter (48 layers x 128 experts x gate/up/down, per-expert
PEFT keys, hidden 256, expert intermediate 128, rank 8, bf16, about 113 MB)
and a dense 7B-like one (32 layers, hidden 4096, intermediate 11008,
q/k/v/o/gate/up/down, rank 16, bf16, about 80 MB).

    python bench/load_bench.py [--rounds 11] [--only moe|dense]
"""

from __future__ import annotations

import argparse
import functools
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


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(paths: dict, rounds: int) -> dict:
    """{name: [seconds per round]}: every round runs every path once, the order reversed every other round."""
    names = list(paths)
    times = {name: [] for name in names}
    for rnd in range(rounds):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            times[name].append(timed(paths[name]))
    return times


def stat(samples: list[float]) -> dict:
    return {"median_s": round(statistics.median(samples), 4), "min_s": round(min(samples), 4)}


def figure(name: str, ours: list[float], theirs: list[float], theirs_label: str, target: float | None,
           faster_is: str = "ratio") -> dict:
    """One row of the README table: ours, theirs, theirs / ours (how many times faster ours is) at the
    median with the min beside, the target and met/missed."""
    ratio = statistics.median(theirs) / statistics.median(ours)
    row = {"figure": name, "ours": stat(ours), "baseline": theirs_label, "baseline_value": stat(theirs),
           "speedup_median": round(ratio, 3), "speedup_min": round(min(theirs) / min(ours), 3)}
    if target is None:
        row.update(target=None, verdict="no stated target")
    else:
        row.update(target=f"speedup >= {target}", verdict="met" if ratio >= target else "missed")
    return row


def memcpy_from_page_cache(path: str, offset: int, nbytes: int) -> None:
    dst = torch.empty(nbytes, dtype=torch.uint8).numpy()  # same allocator as the packed reader's buffer
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        src = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset)
        np.copyto(dst, src)
        del src


def run(kind: str, rounds: int, root: str) -> dict:
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
    used_iterators = set()  # which of SGLang's weight iterators (a) went through: checked below

    def noting(fn):
        @functools.wraps(fn)  # a second run() wraps the wrapper: the name stays the iterator's
        def wrapped(*args, **kwargs):
            used_iterators.add(fn.__name__)
            return fn(*args, **kwargs)
        return wrapped

    for it in ("buffered_multi_thread_safetensors_weights_iterator", "safetensors_weights_iterator",
               "fastsafetensors_weights_iterator", "multi_thread_pt_weights_iterator", "pt_weights_iterator"):
        setattr(loader, it, noting(getattr(loader, it)))

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
    if used_iterators != {"buffered_multi_thread_safetensors_weights_iterator"}:
        raise RuntimeError(f"SGLang's load took {used_iterators}, not its default safetensors path")

    def load_a():
        adapter = sglang_adapter(peft, cfg)
        native(adapter)
        return adapter

    def load_b():
        adapter = sglang_adapter(packed, cfg)
        load_packed_into(adapter, path)
        return adapter

    loads = {"a": load_a, "b": load_b, "c": lambda: memcpy_from_page_cache(path, data_start, nbytes)}
    t, fill = pool_fill(s, cfg, x, y, loads, rounds)
    a, b, c = t["a"], t["b"], t["c"]
    default = "SGLang default loader (PEFT folder: buffered multi-thread safetensors iterator, mmap)"
    figures = [
        figure("load: packed (b) vs SGLang (a)", b, a, default, 10),
        figure("load: packed (b) vs memcpy (c)", b, c, "memcpy of the same bytes from page cache (the floor)", 0.7),
        figure("pool fill: ours (e) vs SGLang (d)", t["e"], t["d"], "SGLang LoRAMemoryPool.load_lora_weight_to_buffer",
               None),
        figure("load + pool fill: packed (g) vs SGLang (f)", t["g"], t["f"], default + " + SGLang pool fill", None),
        figure("read thread's check, PEFT adapter: dry fill (h) vs SGLang's fill (d)", t["h"], t["d"],
               "SGLang LoRAMemoryPool.load_lora_weight_to_buffer", None),
        figure("read thread's check, packed adapter: fill plan (i) vs SGLang's fill (d)", t["i"], t["d"],
               "SGLang LoRAMemoryPool.load_lora_weight_to_buffer", None),
    ]
    med = {k: statistics.median(v) for k, v in t.items()}
    return {**fill, "adapter": kind, "shape": s, "bytes": nbytes, "file_bytes": size, "tensors_packed": len(entries),
            "pack_s": round(pack_s, 3), "rounds": rounds,
            "statistic": "median over interleaved rounds, min beside; ratios of medians (ratio of mins beside)",
            "timings": {k: stat(v) for k, v in t.items()},
            "paths": {"a": default, "b": "packed file, sglang_mint load_packed_into", "c": "memcpy from page cache",
                      "d": "SGLang pool fill of (a)'s adapter", "e": "sglang_mint pool fill of (b)'s adapter, plan incl.",
                      "f": "(a) then (d), one step", "g": "(b) then (e), one step",
                      "h": "read thread: SGLang's fill of (a)'s adapter run dry (meta buffers)",
                      "i": "read thread: the packed fill plan of (b)'s adapter"},
            "b_GBps_median": round(nbytes / med["b"] / 1e9, 3), "c_GBps_median": round(nbytes / med["c"] / 1e9, 3),
            "figures": figures}


def pool_fill(s: dict, cfg, native_adapter, packed_adapter, loads: dict, rounds: int) -> tuple[dict, dict]:
    from sglang.srt.lora import mem_pool

    from _standin_pool import pools_equal, standin_base_and_modules, standin_pool, tp1
    from sglang_mint.sglang.packed_pool import load_lora_weight_to_buffer as ours

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
        # stalls a whole op (measured 0.07 s to 1.5 s for the same fill), hence many interleaved rounds.
        def sglang_end_to_end():  # a fresh adapter each time: (a)'s mmap views are read by this fill
            original(theirs_pool, "a", 0, loads["a"](), modules, None, None)

        def packed_end_to_end():
            ours(original, ours_pool, "a", 0, loads["b"](), modules, None, None)

        # what the read thread now checks before an adapter is installed (adapter_reader.fill_refusal): SGLang's
        # fill run dry on meta copies of the pool's buffers, or, for a packed adapter, our fill's plan
        from types import SimpleNamespace

        from sglang_mint.sglang.adapter_reader import fill_refusal

        def reader_of(pool):
            return SimpleNamespace(memory_pool=pool, lora_modules=modules, embed_tokens_module=None,
                                   lm_head_module=None)

        def dry_fill():
            if fill_refusal(reader_of(theirs_pool), "a", native_adapter) is not None:
                raise RuntimeError("the dry fill refused what SGLang's fill took")

        def packed_check():
            packed_adapter.__dict__.pop("_mint_pool_plan", None)
            if fill_refusal(reader_of(ours_pool), "a", packed_adapter) is not None:
                raise RuntimeError("the packed plan refused what our fill took")

        times = interleaved({**loads, "d": sglang_fill, "e": packed_fill, "f": sglang_end_to_end,
                             "g": packed_end_to_end, "h": dry_fill, "i": packed_check}, rounds)
    pool_bytes = sum(t[0].numel() * t.element_size() for bufs in (ours_pool.A_buffer, ours_pool.B_buffer)
                     for layers in bufs.values() for t in layers)
    return times, {"pool_slot_bytes": pool_bytes, "d_copies": counts["d"],
                   "e_copies": packed_adapter.mint_packed["pool_fill"]["copies"],
                   "e_zero_fills": packed_adapter.mint_packed["pool_fill"]["zero_fills"], "pools_bit_identical": True}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=11, help="interleaved rounds per path (default 11)")
    ap.add_argument("--no-record", action="store_true", help="print only, append nothing to bench/results")
    ap.add_argument("--only", choices=list(SHAPES))
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="mint-load-bench-") as root:
        for kind in [args.only] if args.only else list(SHAPES):
            rec = run(kind, args.rounds, root)
            rec = rec if args.no_record else append_result("load_bench", rec)
            print(json.dumps({k: v for k, v in rec.items() if k not in ("machine", "shape", "figures")}))
            for f in rec["figures"]:
                print(f"  {kind:<5} {f['figure']:<44} ours {f['ours']['median_s']:.4f} s (min {f['ours']['min_s']:.4f})"
                      f"  baseline {f['baseline_value']['median_s']:.4f} (min {f['baseline_value']['min_s']:.4f})"
                      f"  x{f['speedup_median']} (min x{f['speedup_min']})  {f['target'] or ''} {f['verdict']}")


if __name__ == "__main__":
    main()
