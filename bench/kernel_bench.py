"""Question: how fast are the mint LoRA kernels next to SGLang's, and how close
to the memory-bandwidth limit?

Shapes (issue 6): decode with 1, 8, 64, 256 distinct adapters x 1 token;
prefill 4 adapters x 512 tokens; rank 8/16/64; hidden 4096 and 7168; qkv and
gate_up slices; DeepSeek MLA fused q_a (1536) + kv_a (576).

On CUDA, per shape: our kernels (sgmv two-launch, bgmv two-launch, fused bgmv
for decode), SGLang's csgmv and triton-backend kernels on identical inputs
(when sglang's kernel modules import; otherwise the row says so), the base
layer's GEMM, and achieved bytes/s of our best path against a measured
device-to-device copy bandwidth.

On CPU only the torch reference path runs (a smaller shape subset), and every
row says so: those numbers are not kernel timings.

Output: JSON lines in bench/results/kernel_bench_<device>.jsonl, each with
setup, device, git commit. Usage: python bench/kernel_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from sglang_mint.kernels import (
    LoraBatch, bgmv_fused, sgmv_expand, sgmv_expand_ref, sgmv_shrink, sgmv_shrink_ref,
)
from _common import git_commit
from sglang_mint.kernels._config import device_key

ROOT = Path(__file__).resolve().parent.parent


def shapes(cpu: bool):
    """(name, hidden K, slice widths, mode, n_adapters, tokens_per_adapter, rank)."""
    ops = {
        4096: [("qkv", [4096, 1024, 1024]), ("gate_up", [14336, 14336])],
        7168: [("gate_up", [18432, 18432]), ("mla_qa_kva", [1536, 576])],
    }
    out = []
    for K, layers in ops.items():
        for op, widths in layers:
            for r in (8, 16, 64):
                for n in (1, 8, 64, 256):
                    out.append((op, K, widths, "decode", n, 1, r))
                out.append((op, K, widths, "prefill", 4, 512, r))
    if cpu:  # the reference path on 2 CPU cores: a representative subset
        # (the reference gathers one weight copy per row: prefill gate_up would need GBs)
        out = [s for s in out if s[1] == 4096 and s[6] == 16 and s[4] <= 64
               and not (s[3] == "prefill" and sum(s[2]) > 8192)] + \
              [s for s in out if s[0] == "mla_qa_kva" and s[6] == 16 and s[4] <= 8]
    return out


def timeit(fn, device, reps):
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=10, rep=max(reps, 20))  # ms
    fn()
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps * 1e3


def copy_bandwidth(device) -> float:
    """Bytes/s of a large device copy (read + write counted)."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    src = torch.empty(n, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    ms = timeit(lambda: dst.copy_(src), device, 10)
    return 2 * n / (ms / 1e3)


def build(K, widths, n_adapters, per, r, device, dtype, gen):
    S = len(widths)
    T = n_adapters * per
    n_slots = n_adapters
    out_total = sum(widths)
    offs = [0]
    for w in widths:
        offs.append(offs[-1] + w)
    x = torch.randn(T, K, generator=gen).to(device, dtype)
    a = (torch.randn(n_slots, S * r, K, generator=gen) * 0.05).to(device, dtype)
    b = (torch.randn(n_slots, out_total, r, generator=gen) * 0.05).to(device, dtype)
    ranks, scal = [r] * n_slots, [1.0] * n_slots
    # tokens interleaved across adapters (a real decode batch), so routing must sort
    token_slots = torch.arange(T) % n_adapters
    perm = torch.argsort(token_slots, stable=True)
    seg = LoraBatch.from_segments([per] * n_adapters, list(range(n_adapters)), ranks, scal,
                                  device, permutation=perm)
    tok = LoraBatch.from_token_slots(token_slots, ranks, scal, device)
    return dict(x=x, a=a, b=b, seg=seg, tok=tok, offs=offs, T=T, S=S,
                offsets=torch.tensor(offs, dtype=torch.int32, device=device))


def sglang_runners(d, r, device):
    """csgmv and triton-backend callables on the same tensors, or (None, reason)."""
    if device.type != "cuda":
        return {}, "CPU run: SGLang kernels need CUDA"
    try:
        from sglang.kernels.ops.lora.dense.chunked_sgmv_expand import chunked_sgmv_lora_expand_forward
        from sglang.kernels.ops.lora.dense.chunked_sgmv_shrink import chunked_sgmv_lora_shrink_forward
        from sglang.kernels.ops.lora.dense.qkv_lora_b import qkv_lora_b_fwd
        from sglang.kernels.ops.lora.dense.sgemm_lora_a import sgemm_lora_a_fwd
        from sglang.srt.lora.utils import LoRABatchInfo
    except Exception as e:  # noqa: BLE001
        return {}, f"sglang kernels not importable: {type(e).__name__}: {e}"[:300]
    seg, T = d["seg"], d["T"]
    n_seg = seg.num_segments
    chunk = 16 if T < 64 else (32 if T < 256 else 128)
    # csgmv: adapter-sorted rows cut into chunks of <= chunk rows
    lens, slots = [], []
    for s, L in zip(seg.seg_slots.tolist(), (seg.seg_indptr[1:] - seg.seg_indptr[:-1]).tolist()):
        while L > 0:
            lens.append(min(L, chunk)); slots.append(s); L -= chunk
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.cumsum(torch.tensor(lens), 0)
    cs_info = LoRABatchInfo(
        use_cuda_graph=False, bs=len(lens), num_segments=len(lens), seg_indptr=indptr.to(device),
        weight_indices=torch.tensor(slots, dtype=torch.int32, device=device),
        lora_ranks=seg.ranks, scalings=seg.scalings, max_len=chunk,
        seg_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        permutation=seg.permutation)
    tr_info = LoRABatchInfo(
        use_cuda_graph=False, bs=n_seg, num_segments=n_seg, seg_indptr=seg.seg_indptr,
        weight_indices=seg.seg_slots, lora_ranks=seg.ranks, scalings=seg.scalings,
        max_len=seg.max_seg_len, seg_lens=(seg.seg_indptr[1:] - seg.seg_indptr[:-1]).int(),
        permutation=seg.permutation)
    x, a, b, offsets, offs, S = d["x"], d["a"], d["b"], d["offsets"], d["offs"], d["S"]
    out = torch.zeros(T, offs[-1], device=device, dtype=x.dtype)
    widest = max(hi - lo for lo, hi in zip(offs, offs[1:]))

    def csgmv():
        y = chunked_sgmv_lora_shrink_forward(x=x, weights=a, batch_info=cs_info, num_slices=S)
        chunked_sgmv_lora_expand_forward(x=y, weights=b, batch_info=cs_info, slice_offsets=offsets,
                                         max_slice_size=widest, base_output=out,
                                         slice_offsets_cpu=torch.tensor(offs))

    def triton_backend():
        y = sgemm_lora_a_fwd(x, a, tr_info, stack_num=S)
        qkv_lora_b_fwd(y, b, tr_info, offsets, widest, out, n_slices=S)

    return {"sglang_csgmv": csgmv, "sglang_triton": triton_backend}, None


def run_shape(spec, device, dtype, reps, gen):
    op, K, widths, mode, n, per, r = spec
    d = build(K, widths, n, per, r, device, dtype, gen)
    x, a, b, T, S, offs, offsets = d["x"], d["a"], d["b"], d["T"], d["S"], d["offs"], d["offsets"]
    y = torch.empty(T, S * r, device=device, dtype=dtype)
    out = torch.zeros(T, offs[-1], device=device, dtype=dtype)
    row = {"setup": {"op": op, "hidden": K, "slice_widths": widths, "mode": mode,
                     "distinct_adapters": n, "tokens_per_adapter": per, "tokens": T,
                     "rank": r, "dtype": str(dtype).replace("torch.", "")}}
    res = {}
    # adapter bytes every path must move at least once, plus activations in/out
    esz = x.element_size()
    moved = n * (S * r * K + offs[-1] * r) * esz + T * K * esz + 2 * T * offs[-1] * esz
    if device.type == "cuda":
        seg, tok = d["seg"], d["tok"]
        res["ours_sgmv_ms"] = timeit(lambda: (sgmv_shrink(x, a, y, seg, S),
                                              sgmv_expand(y, b, out, seg, offsets, offs)), device, reps)
        if mode == "decode":
            res["ours_bgmv_ms"] = timeit(lambda: (sgmv_shrink(x, a, y, tok, S),
                                                  sgmv_expand(y, b, out, tok, offsets, offs)), device, reps)
            res["ours_fused_ms"] = timeit(lambda: bgmv_fused(x, a, b, out, tok, offsets, offs, S),
                                          device, reps)
        runners, why = sglang_runners(d, r, device)
        for name, fn in runners.items():
            res[f"{name}_ms"] = timeit(fn, device, reps)
        if why:
            row["sglang_note"] = why
        w = (torch.randn(offs[-1], K, generator=gen) * 0.02).to(device, dtype)
        res["base_gemm_ms"] = timeit(lambda: torch.matmul(x, w.t()), device, reps)
        ours = min(v for k, v in res.items() if k.startswith("ours_"))
        row["path"] = "triton kernels (CUDA)"
    else:
        seg = d["seg"]
        res["ours_ref_ms"] = timeit(lambda: (sgmv_shrink_ref(x, a, y, seg, S),
                                             sgmv_expand_ref(y, b, out, seg, offsets, offs)),
                                    device, reps)
        ours = res["ours_ref_ms"]
        row["path"] = "REFERENCE ONLY (torch on CPU): not kernel timings; GPU figures pending"
    res["bytes_moved"] = moved
    res["achieved_bytes_per_s"] = moved / (ours / 1e3)
    if "base_gemm_ms" in res:
        res["lora_over_base_gemm"] = ours / res["base_gemm_ms"]
    for k in ("sglang_csgmv_ms", "sglang_triton_ms"):
        if k in res:
            res[f"speedup_vs_{k[:-3]}"] = res[k] / ours
    row["results"] = res
    return row


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="first 3 shapes only")
    p.add_argument("--reps", type=int, default=None)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    reps = args.reps or (50 if device.type == "cuda" else 2)
    dev = device_key(device)
    out_path = Path(args.out or ROOT / "bench" / "results" / f"kernel_bench_{dev}.jsonl")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    commit = git_commit()
    if device.type == "cpu":
        torch.set_num_threads(2)
        print("CPU run: timing the torch REFERENCE path only (no GPU); GPU figures pending.")
    bw = copy_bandwidth(device)
    print(f"device={dev} measured copy bandwidth {bw / 1e9:.1f} GB/s")
    gen = torch.Generator().manual_seed(0)
    specs = shapes(device.type == "cpu")
    if args.quick:
        specs = specs[:3]
    with open(out_path, "w") as f:
        for spec in specs:
            row = run_shape(spec, device, dtype, reps, gen)
            row.update(device=dev, git_commit=commit, copy_bandwidth_bytes_per_s=bw)
            row["results"]["fraction_of_copy_bw"] = row["results"]["achieved_bytes_per_s"] / bw
            f.write(json.dumps(row) + "\n")
            s, r = row["setup"], row["results"]
            timing = " ".join(f"{k}={v:.4g}" for k, v in r.items() if k.endswith("_ms"))
            print(f"{s['op']:>10} K={s['hidden']} {s['mode']:>7} n={s['distinct_adapters']:>3} "
                  f"r={s['rank']:>2} {timing} bw={r['fraction_of_copy_bw']:.2f}x"
                  + (f"  [{row['sglang_note'][:60]}]" if "sglang_note" in row else ""))
    print(f"wrote {out_path} ({row['path']})")


if __name__ == "__main__":
    sys.exit(main())
