"""Question: how fast are the mint LoRA kernels next to SGLang's on identical inputs, and how
close do they come to what the device can move?

Shapes (issue 11), TP 1, bf16, every pool slot at the same rank r (alpha = 2r):
  Llama-3.1-8B   qkv (4096 -> 4096+1024+1024), o, gate_up (-> 2 x 14336), down
  Qwen3-30B-A3B  qkv (2048 -> 4096+512+512), o, routed experts gate_up / down (128, top 8)
  DeepSeek-V3    MLA's fused q_a + kv_a (7168 -> 1536+576), o (16384 -> 7168),
                 routed experts gate_up / down (256, top 8)
  prefill: 2048 tokens, the adapters' requests one after another; decode: 64 tokens,
  one per request, adapters interleaved; 1, 8 and 64 distinct adapters; rank 8, 16, 64.

Variants, one JSON row each; no row is a ratio to another row:
  ours_sgmv    sgmv_shrink + sgmv_expand on host-built segments (dense, prefill and decode)
  ours_bgmv    the same on the per-token form, as serving runs decode: LoraBatch.by_slot,
               planned once per batch (in the check before timing), like every layer after the first
  ours_fused   bgmv_fused, one launch per token                 (dense, decode)
  ours_moe     moe_lora; its plan is built before timing     (experts)
  ours_moe_planned     moe_lora with its plan (kernels/moe_plan.py) built in the timed call, as
               serving builds one per MoE layer and forward (shared there by gate_up and down)
  ours_moe_torch_plan  the same with the plan in torch ops (moe_lora_plan_ref, the plan before)
  sglang_csgmv, sglang_triton, sglang_fused_moe_lora         (bench/gpu/sglang_kernels.py)
  base_gemm    the layer's own x @ W^T, for scale            (dense)
A row has ms (median of triton.testing.do_bench, which flushes L2 before each call),
host_us (the host's time to enqueue one call: where it exceeds the flush, ms includes it),
ms_q20 / ms_q80, graph_ms on decode (CUDA-graph replay: no launch gaps, L2 warm),
bytes (the least the op moves: each touched adapter matrix, x, out read and written),
flops, floor_ms (the larger of bytes / copy bandwidth and flops / bf16 matmul rate, both
measured first: the "ceilings" row), fraction_of_copy_bw, and rel_err: the variant's delta
against the fp32 reference (sgmv_*_ref, moe_lora_ref) on the same inputs, checked before
timing, our intermediate poisoned with NaN. Host-side building (batches, plans, SGLang's
batch infos and alignment, offset lists) happens once per shape, never in a timed call.
Rank 16 runs first, then 64, then 8: a run stopped by --deadline-s still covers every
layer; what it did not reach is written as skipped. On a GPU the shapes run in a worker
process; a kernel that breaks the CUDA context (an illegal address) costs its own row, and
a fresh worker goes on from the next variant (see `supervise`).
Block sizes come from the tables (kernels/_config.py); MINT_KERNEL_CONFIG_DIR points a run
at freshly tuned ones (bench/gpu/tune.py).

--dry-run (CPU, TRITON_INTERPRET=1, fp32): every row is planned and written, and one
small shape per layer kind runs every variant, ours and SGLang's, against the reference:
everything up to the first CUDA call.

    python bench/kernel_bench.py [--out FILE] [--deadline-s S] [--limit N] [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if "--dry-run" in sys.argv:  # before anything imports triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "gpu")]
import sglang_kernels  # noqa: E402
from _common import git_commit  # noqa: E402
from sglang_mint.kernels import (  # noqa: E402
    LoraBatch, bgmv_fused, moe_lora, moe_lora_plan, moe_lora_plan_ref, moe_lora_ref, sgmv_expand, sgmv_expand_ref,
    sgmv_shrink, sgmv_shrink_ref,
)


@dataclass(frozen=True)
class Layer:
    model: str
    layer: str
    hidden: int                 # K, the input width
    slice_widths: tuple         # output widths; experts: (W,) * slices
    experts: int = 0            # routed experts E (0: dense)
    top_k: int = 0


LAYERS = (
    Layer("llama3_8b", "qkv", 4096, (4096, 1024, 1024)),
    Layer("llama3_8b", "o", 4096, (4096,)),
    Layer("llama3_8b", "gate_up", 4096, (14336, 14336)),
    Layer("llama3_8b", "down", 14336, (4096,)),
    Layer("qwen3_30b_a3b", "qkv", 2048, (4096, 512, 512)),
    Layer("qwen3_30b_a3b", "o", 4096, (2048,)),
    Layer("qwen3_30b_a3b", "experts_gate_up", 2048, (768, 768), 128, 8),
    Layer("qwen3_30b_a3b", "experts_down", 768, (2048,), 128, 8),
    Layer("deepseek_v3", "mla_qkv_a", 7168, (1536, 576)),
    Layer("deepseek_v3", "o", 16384, (7168,)),
    Layer("deepseek_v3", "experts_gate_up", 7168, (2048, 2048), 256, 8),
    Layer("deepseek_v3", "experts_down", 2048, (7168,), 256, 8),
)
TOKENS = {"prefill": 2048, "decode": 64}
ADAPTERS = (1, 8, 64)
RANKS = (16, 64, 8)
# (layer, mode, tokens, adapters, rank): one small shape per layer kind, for --dry-run
DRY = (
    (Layer("tiny", "qkv", 64, (48, 16, 16)), "decode", 6, 3, 8),
    (Layer("tiny", "gate_up", 64, (40, 40)), "prefill", 40, 2, 8),
    (Layer("tiny", "mla_qkv_a", 48, (24, 8)), "decode", 5, 2, 4),
    (Layer("tiny", "o", 32, (64,)), "prefill", 36, 2, 8),
    (Layer("tiny", "experts_gate_up", 64, (16, 16), 4, 2), "decode", 5, 2, 8),
    (Layer("tiny", "experts_down", 16, (64,), 4, 2), "prefill", 12, 2, 8),
)
TOL = 3e-2                  # bf16 (STYLE's tolerance table); the dry run's fp32 must pass it too
CHECK_LIMIT = 24 * 2**30    # bytes a reference may gather; past it the row says so
WARMUP_MS, REP_MS = 5, 25


def specs(paths: str = "all"):
    """Every shape, or only the dense (paths="dense") or expert ("experts") layers."""
    keep = {"all": lambda L: True, "dense": lambda L: not L.experts,
            "experts": lambda L: bool(L.experts)}[paths]
    return [(L, mode, TOKENS[mode], n, r) for r in RANKS for L in LAYERS
            for mode in TOKENS for n in ADAPTERS if keep(L)]


def variants(L: Layer, mode: str) -> list[str]:
    if L.experts:
        return ["ours_moe", "sglang_fused_moe_lora", "ours_moe_planned", "ours_moe_torch_plan"]
    ours = ["ours_sgmv"] + (["ours_bgmv", "ours_fused"] if mode == "decode" else [])
    return ours + ["sglang_csgmv", "sglang_triton", "base_gemm"]


def build(spec, device, dtype, gen) -> dict:
    """The shape's tensors, batches and plans, once. Random, never zeros."""
    L, mode, T, n, r = spec
    S = len(L.slice_widths)

    def randn(*shape, scale=1.0):
        return torch.randn(*shape, generator=gen, device=device, dtype=dtype).mul_(scale)

    # decode: token t is request t, on adapter t % n; prefill: n requests of T/n tokens
    requests = T if mode == "decode" else n
    token_slots = torch.arange(T) % n if mode == "decode" else torch.arange(T) // (T // n)
    d = dict(mode=mode, T=T, S=S, rank=r, n_slots=n, requests=requests, token_slots=token_slots,
             request_slots=[i % n for i in range(requests)])
    ranks = torch.full((n,), r, dtype=torch.int32, device=device)
    if L.experts:
        E, k, W = L.experts, L.top_k, L.slice_widths[0]
        down = S == 1
        topk = torch.rand(T, E, generator=gen, device=device).topk(k, dim=1).indices.int()
        d.update(E=E, W=W, topk_ids=topk, mul_routed_weight=down,
                 topk_weights=torch.rand(T, k, generator=gen, device=device),
                 x=randn(T * k if down else T, L.hidden),
                 a=randn(n, E, S * r, L.hidden, scale=L.hidden ** -0.5),
                 b=randn(n, E, S * W, r, scale=r ** -0.5),
                 out0=randn(T, k, S * W), y=torch.empty(S, T * k, r, dtype=dtype, device=device),
                 ranks=ranks, slots_dev=token_slots.int().to(device))
        d["plan"] = moe_lora_plan(topk, d["slots_dev"], ranks, E)
        groups = torch.unique(token_slots.to(device)[:, None] * E + topk.long()).numel()
        d["bytes_lora"] = groups * (S * r * L.hidden + S * W * r)
        d["flops"] = 2 * T * k * (S * r * L.hidden + S * W * r)
    else:
        offs = [0]
        for w in L.slice_widths:
            offs.append(offs[-1] + w)
        N = offs[-1]
        scaling = 2.0
        counts = torch.bincount(token_slots, minlength=n).tolist()
        perm = torch.argsort(token_slots, stable=True) if mode == "decode" else None
        d.update(offs=offs, offsets=torch.tensor(offs, dtype=torch.int32, device=device),
                 scaling=scaling, x=randn(T, L.hidden),
                 a=randn(n, S * r, L.hidden, scale=L.hidden ** -0.5),
                 b=randn(n, N, r, scale=r ** -0.5), out0=randn(T, N),
                 y=torch.empty(T, S * r, dtype=dtype, device=device),
                 seg=LoraBatch.from_segments(counts, range(n), [r] * n, [scaling] * n, device,
                                             permutation=perm),
                 tok=LoraBatch.from_token_slots(token_slots, [r] * n, [scaling] * n, device))
        d["bytes_lora"] = n * (S * r * L.hidden + N * r)
        d["flops"] = 2 * T * (S * r * L.hidden + N * r)
    d["out"] = d["out0"].clone()
    esz = torch.finfo(dtype).bits // 8
    d["bytes"] = esz * (d["bytes_lora"] + d["x"].numel() + 2 * d["out"].numel())
    return d


def runners(d: dict, names: list[str]) -> tuple[dict, dict]:
    """{variant: fn} adding the delta into d["out"], and {variant: why} for those unavailable."""
    x, a, b, out, y, S = d["x"], d["a"], d["b"], d["out"], d["y"], d["S"]
    fns, why = {}, {}
    if "E" in d:
        def ours_moe(plan):
            return lambda: moe_lora(
                out, x, a, b, d["topk_ids"], d["topk_weights"], d["slots_dev"], d["ranks"],
                n_slices=S, mul_routed_weight=d["mul_routed_weight"], n_experts=d["E"], plan=plan(), y=y)

        fns["ours_moe"] = ours_moe(lambda: d["plan"])
        for name, make_plan in (("ours_moe_planned", moe_lora_plan), ("ours_moe_torch_plan", moe_lora_plan_ref)):
            fns[name] = ours_moe(lambda make_plan=make_plan: make_plan(d["topk_ids"], d["slots_dev"], d["ranks"], d["E"]))
        theirs, reason = sglang_kernels.experts(d)
    else:
        seg, tok, offsets, offs = d["seg"], d["tok"], d["offsets"], d["offs"]
        fns["ours_sgmv"] = lambda: (sgmv_shrink(x, a, y, seg, S), sgmv_expand(y, b, out, seg, offsets, offs))
        fns["ours_bgmv"] = lambda: (sgmv_shrink(x, a, y, tok, S), sgmv_expand(y, b, out, tok, offsets, offs))
        fns["ours_fused"] = lambda: bgmv_fused(x, a, b, out, tok, offsets, offs, S)
        theirs, reason = sglang_kernels.dense(d)
    fns.update(theirs)
    for name in names:
        if name not in fns and name != "base_gemm":
            why[name] = reason
    return {k: v for k, v in fns.items() if k in names}, why


def reference(d: dict):
    """fp32 out0 + delta, or (None, why) when its gathers would pass CHECK_LIMIT."""
    T, S, r = d["T"], d["S"], d["rank"]
    if "E" in d:  # moe_lora_ref gathers [pairs, R, K] and [pairs, W, R] per slice, fp32 + copies
        need = 10 * d["topk_ids"].numel() * max(r * d["x"].shape[1], d["W"] * r)
    else:  # sgmv_shrink_ref gathers [T, S*R, K]; sgmv_expand_ref [T, W, R] per slice
        widest = max(hi - lo for lo, hi in zip(d["offs"], d["offs"][1:]))
        need = 10 * T * max(S * r * d["x"].shape[1], widest * r)
    if need > CHECK_LIMIT:
        return None, f"skipped: the reference would gather {need / 2**30:.0f} GiB"
    ref = d["out0"].float().clone()
    if "E" in d:
        moe_lora_ref(ref, d["x"], d["a"], d["b"], d["topk_ids"], d["topk_weights"], d["slots_dev"],
                     d["ranks"], n_slices=S, mul_routed_weight=d["mul_routed_weight"], n_experts=d["E"])
    else:
        y = torch.zeros(T, S * r, dtype=torch.float32, device=ref.device)
        sgmv_shrink_ref(d["x"], d["a"], y, d["seg"], S)
        sgmv_expand_ref(y, d["b"], ref, d["seg"], d["offsets"], d["offs"])
    return ref, None


def check(fn, d: dict, ref) -> float:
    """‖out - ref‖ / ‖ref - out0‖ after one call from out0 (NaN if anything was left unwritten)."""
    d["out"].copy_(d["out0"])
    d["y"].fill_(float("nan"))
    fn()
    delta = ref - d["out0"].float()
    return float((d["out"].float() - ref).norm() / delta.norm())


def time_ms(fn, graph: bool) -> dict:
    import triton.testing as tt

    med, q20, q80 = tt.do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, quantiles=[0.5, 0.2, 0.8])
    res = {"ms": med, "ms_q20": q20, "ms_q80": q80}
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):  # what the host spends enqueuing one call (launchers, Python)
        fn()
    res["host_us"] = (time.perf_counter() - t0) / 20 * 1e6
    torch.cuda.synchronize()
    if graph:
        try:
            res["graph_ms"] = tt.do_bench_cudagraph(fn, rep=REP_MS // 2, return_mode="median")
        except Exception as e:  # noqa: BLE001 - the row says why; the next line checks the context
            res["graph_why"] = f"{type(e).__name__}: {e}"[:200]
        torch.cuda.synchronize()
    return res


def ceilings(device) -> dict:
    """Device-to-device copy (bytes read + written per second) and bf16 matmul (flop/s)."""
    import triton.testing as tt

    src = torch.randint(0, 255, (2**30,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    copy_ms = tt.do_bench(lambda: dst.copy_(src), warmup=WARMUP_MS, rep=REP_MS * 5, return_mode="median")
    m = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    mm_ms = tt.do_bench(lambda: m @ m, warmup=WARMUP_MS, rep=REP_MS * 5, return_mode="median")
    return {"kind": "ceilings", "copy_bytes_per_s": 2 * 2**30 / (copy_ms / 1e3),
            "bf16_matmul_flops_per_s": 2 * 8192**3 / (mm_ms / 1e3)}


class ContextLost(RuntimeError):
    """A kernel broke the CUDA context (e.g. an illegal address): every later call fails too.

    rows: the spec's rows so far, the failed one last."""

    def __init__(self, msg, rows=()):
        super().__init__(msg)
        self.rows = list(rows)


def run_spec(spec, device, dtype, gen, ceil, dry_run, first_variant=0, lose_context_at=None) -> list[dict]:
    """The rows of one shape, from variant first_variant on.

    lose_context_at: a variant index at which to act as if its kernel broke the CUDA
    context (MINT_BENCH_LOSE_CONTEXT_AT, for testing the worker restarts on CPU)."""
    L, mode, T, n, r = spec
    names = variants(L, mode)
    d = build(spec, device, dtype, gen)
    fns, why = runners(d, names)
    ref, ref_why = reference(d)
    rows = []
    for j, name in enumerate(names):
        if j < first_variant:
            continue
        if j == lose_context_at:
            rows.append({"variant": name, "status": "failed", "why": "injected: context lost"})
            raise ContextLost(f"after {name}: injected", rows)
        if name != "base_gemm" and name not in fns:
            rows.append({"variant": name, "status": "unavailable", "why": why.get(name)})
            continue
        try:
            rows.append(measure(name, fns.get(name), d, ref, ref_why, spec, gen, ceil, dry_run))
        except Exception as e:  # noqa: BLE001 - one variant's failure is its row, not the run's
            rows.append({"variant": name, "status": "failed", "why": f"{type(e).__name__}: {e}"[:300]})
            if device.type == "cuda":
                try:
                    torch.cuda.synchronize()
                except Exception as lost:  # noqa: BLE001
                    raise ContextLost(f"after {name}: {lost}"[:300], rows) from None
    del d, fns, ref
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def measure(name, fn, d, ref, ref_why, spec, gen, ceil, dry_run) -> dict:
    L, mode, T, n, r = spec
    row = {"variant": name, "status": "ok"}
    if name == "base_gemm":
        w = torch.randn(d["offs"][-1], L.hidden, generator=gen, device=d["x"].device, dtype=d["x"].dtype)
        x = d["x"]
        fn = lambda: torch.matmul(x, w.t())  # noqa: E731
        row.update(bytes=x.element_size() * (x.numel() + w.numel() + T * w.shape[0]),
                   flops=2 * T * w.shape[0] * L.hidden)
    else:
        row.update(bytes=d["bytes"], flops=d["flops"])
        if ref is None:
            row["check"] = ref_why
        else:
            row["rel_err"] = check(fn, d, ref)
            row["check"] = "ok" if row["rel_err"] <= TOL else "FAIL"  # NaN fails too
            if row["check"] == "FAIL":
                row["status"] = "wrong"
    if not dry_run:
        row.update(time_ms(fn, graph=mode == "decode"))
        floor_s = max(row["bytes"] / ceil["copy_bytes_per_s"], row["flops"] / ceil["bf16_matmul_flops_per_s"])
        row.update(floor_ms=floor_s * 1e3, bytes_per_s=row["bytes"] / (row["ms"] / 1e3))
        row["fraction_of_copy_bw"] = row["bytes_per_s"] / ceil["copy_bytes_per_s"]
    return row


def setup_of(spec) -> dict:
    L, mode, T, n, r = spec
    return {"kind": "kernel", **asdict(L), "mode": mode, "tokens": T, "adapters": n, "rank": r}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--deadline-s", type=float, default=None, help="start no shape after this many seconds")
    p.add_argument("--limit", type=int, default=None, help="the first N shapes only")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--paths", choices=("all", "dense", "experts"), default="all",
                   help="which layers: all, dense only, or routed experts only")
    p.add_argument("--worker", default=None, metavar="SPEC:VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--isolate", action="store_true",
                   help="with --dry-run: run the shapes in worker processes too, as on a GPU")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: this benchmark times GPU kernels; use --dry-run to check it on CPU",
              file=sys.stderr)
        return 2
    if args.worker or (args.dry_run and not args.isolate):
        return run(args)
    return supervise(args)


def todo_of(args) -> list[tuple]:
    """(spec, "run" | "planned") in run order; a worker's SPEC index counts in this list."""
    plan = specs(args.paths)[: args.limit]
    if not args.dry_run:
        return [(s, "run") for s in plan]
    return [(s, "planned") for s in plan] + [(s, "run") for s in DRY]


def supervise(args) -> int:
    """Run the shapes in worker processes; a worker that loses its CUDA context costs one row.

    A worker stops at a lost context after writing that variant's failed row and
    OUT.resume ("spec:variant" to go on from); one that dies without it (a crash)
    costs the rest of the shape it was in, per OUT.resume's last spec.
    """
    t0 = time.monotonic()
    out = args.out or HERE / "results" / f"kernel_bench_{torch.cuda.get_device_name().replace(' ', '_')}.jsonl"
    todo = todo_of(args)
    resume = out.with_name(out.name + ".resume")
    out.unlink(missing_ok=True)
    at, restarts, rc = "0:0", 0, 0
    while at is not None:
        cmd = [sys.executable, __file__, "--out", str(out), "--worker", at]
        cmd += ["--limit", str(args.limit)] if args.limit else []
        cmd += ["--paths", args.paths] + (["--dry-run"] if args.dry_run else [])
        if args.deadline_s is not None:
            cmd += ["--deadline-s", f"{max(0.0, args.deadline_s - (time.monotonic() - t0)):.0f}"]
        resume.unlink(missing_ok=True)
        rc = subprocess.run(cmd).returncode
        done = resume.read_text().split() if resume.exists() else []
        if rc in (0, 1) or not done:
            at = None
        else:
            restarts += 1
            spec, variant, why = done[0], done[1], " ".join(done[2:])
            if why == "running":  # died without a word: the rest of that shape is lost
                with open(out, "a") as f:
                    f.write(json.dumps({**setup_of(todo[int(spec)][0]), "variant": None,
                                        "status": "failed", "why": f"worker exit {rc}"}) + "\n")
                at = f"{int(spec) + 1}:0"
            else:
                at = f"{spec}:{variant}"
            print(f"kernel_bench: worker exit {rc} ({why or 'context lost'}); restarting at {at}",
                  flush=True)
    resume.unlink(missing_ok=True)
    print(f"kernel_bench: {restarts} worker restarts, {time.monotonic() - t0:.0f} s")
    return 1 if restarts else rc


def run(args) -> int:
    t0 = time.monotonic()
    import triton

    device = torch.device("cpu" if args.dry_run else "cuda")
    dtype = torch.float32 if args.dry_run else torch.bfloat16
    dev_name = "dry-run (CPU, Triton interpreter)" if args.dry_run else torch.cuda.get_device_name()
    commit = os.environ.get("MINT_GIT_COMMIT") or git_commit()  # the GPU machine has no .git
    stamp = {"device": dev_name, "git_commit": commit, "torch": torch.__version__,
             "triton": triton.__version__, "dtype": str(dtype).replace("torch.", "")}
    out_path = args.out or HERE / "results" / f"kernel_bench_{dev_name.replace(' ', '_')}.jsonl"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    first_spec, first_variant = map(int, (args.worker or "0:0").split(":"))
    resume = out_path.with_name(out_path.name + ".resume")
    plan = specs(args.paths)[: args.limit]
    ceil = None
    if not args.dry_run:
        if first_spec or first_variant:  # a restarted worker: the first worker measured them
            ceil = json.loads(out_path.read_text().splitlines()[0])
        else:
            ceil = ceilings(device)
    failures = 0
    with open(out_path, "a" if args.worker else "w") as f:
        if ceil and not (first_spec or first_variant):
            f.write(json.dumps({**ceil, **stamp}) + "\n")
            print(f"ceilings: copy {ceil['copy_bytes_per_s'] / 1e12:.2f} TB/s, "
                  f"bf16 matmul {ceil['bf16_matmul_flops_per_s'] / 1e12:.0f} TFLOP/s")
        todo = todo_of(args)
        for i, (spec, what) in enumerate(todo):
            if i < first_spec:
                continue
            # a fresh generator per shape: a restarted worker draws the same tensors
            gen = torch.Generator(device).manual_seed(i)
            base = {**setup_of(spec), **stamp}
            late = args.deadline_s is not None and time.monotonic() - t0 > args.deadline_s
            if what == "planned" or late:
                status = "planned" if what == "planned" else "skipped"
                why = "dry run" if what == "planned" else f"--deadline-s {args.deadline_s:.0f} passed"
                rows = [{"variant": v, "status": status, "why": why} for v in variants(*spec[:2])]
            else:
                resume.write_text(f"{i} 0 running")
                if os.environ.get("MINT_BENCH_DIE_AT") == str(i):  # testing: a hard crash
                    os._exit(9)
                lose = os.environ.get("MINT_BENCH_LOSE_CONTEXT_AT", "").split(":")
                try:
                    rows = run_spec(spec, device, dtype, gen, ceil, args.dry_run,
                                    first_variant if i == first_spec else 0,
                                    int(lose[1]) if lose[0] == str(i) else None)
                except torch.cuda.OutOfMemoryError as e:
                    torch.cuda.empty_cache()
                    rows = [{"variant": v, "status": "failed", "why": f"OOM: {e}"[:300]}
                            for v in variants(*spec[:2])]
                except ContextLost as e:
                    for row in e.rows:
                        f.write(json.dumps({**base, **row}) + "\n")
                    done = variants(*spec[:2]).index(e.rows[-1]["variant"]) + 1
                    resume.write_text(f"{i} {done} context lost after {e.rows[-1]['variant']}")
                    print(f"CUDA context lost: {e}", flush=True)
                    return 3
            for row in rows:
                f.write(json.dumps({**base, **row}) + "\n")
            f.flush()
            failures += sum(r["status"] in ("wrong", "failed") for r in rows)
            if what == "run" and not late:
                print(line(spec, rows), flush=True)
    resume.unlink(missing_ok=True)
    print(f"wrote {out_path}: {len(plan)} shapes, {failures} wrong or failed rows, "
          f"{time.monotonic() - t0:.0f} s")
    return 1 if failures else 0


def line(spec, rows) -> str:
    L, mode, T, n, r = spec
    cells = []
    for row in rows:
        val = f"{row['ms'] * 1e3:.1f}us" if "ms" in row else row["status"]
        if "rel_err" in row and (row["check"] != "ok" or "ms" not in row):
            val += f"(err {row['rel_err']:.1e})"
        cells.append(f"{row['variant']}={val}")
    return f"{L.model}/{L.layer:<15} {mode:>7} n={n:<2} r={r:<2} " + " ".join(cells)


if __name__ == "__main__":
    sys.exit(main())
