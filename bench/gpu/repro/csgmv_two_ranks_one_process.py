"""SGLang 0.5.23's csgmv shrink, compiled once per (K, NUM_SLICES, BLOCK_M), is reused for another rank.

Not a bug users hit: it shows the precondition that bench/gpu/sglang_kernels.py broke.
On CUDA, `_chunked_lora_shrink_kernel` is wrapped in sglang.srt.utils.CachedKernel
keyed by (K, NUM_SLICES, BLOCK_M) (chunked_sgmv_shrink.py:11-13), while N = NUM_SLICES *
max_rank is a constexpr (line 27) that sets the weight stride N * K (52) and the output
row stride N (56). A server allocates every LoRA buffer at one max_lora_rank
(LoRAMemoryPool), so N is fixed per process there; kernel_bench ran ranks 16, 64 and 8 in
one process, and rank 8 reused rank 64's kernel: NaN at llama3_8b qkv prefill with 1 and
8 adapters, an illegal address with 64 (reads at adapter * 192 * K, writes at row * 192).

Here, in the order that stays in bounds: llama3_8b qkv prefill (K 4096, slices 4096 +
1024 + 1024), 256 tokens of one request on slot 0 as ChunkedSgmvLoRABackend batches them
(chunk 128), through chunked_sgmv_lora_shrink_forward + chunked_sgmv_lora_expand_forward
as run_qkv_lora calls them:
  1. rank 8 in a fresh process                        -> must match the fp32 reference
  2. rank 64, same K / slices / chunk                 -> reuses the N = 24 kernel: wrong
  3. rank 64 after CachedKernel._clear_cache()        -> matches again

    python bench/gpu/repro/csgmv_two_ranks_one_process.py    # needs CUDA

Exit 1 when step 2 is wrong (the cached kernel ignores the rank), 0 when it is right (the
key now covers N), 2 when step 1 or 3 is wrong (rank 8 or 64 is broken by itself).
"""

from __future__ import annotations

import sys

import torch

K, WIDTHS, TOKENS = 4096, (4096, 1024, 1024), 256
TOL = 3e-2  # bf16


def run(rank: int, gen) -> float:
    """Relative error of SGLang's csgmv delta against an fp32 reference."""
    from sglang.kernels.ops.lora.dense.chunked_sgmv_expand import chunked_sgmv_lora_expand_forward
    from sglang.kernels.ops.lora.dense.chunked_sgmv_shrink import chunked_sgmv_lora_shrink_forward
    from sglang.srt.lora.utils import LoRABatchInfo

    dev, dt, S = torch.device("cuda"), torch.bfloat16, len(WIDTHS)
    offs = [0]
    for w in WIDTHS:
        offs.append(offs[-1] + w)
    x = torch.randn(TOKENS, K, generator=gen, device=dev, dtype=dt)
    a = torch.randn(1, S * rank, K, generator=gen, device=dev, dtype=dt).mul_(K ** -0.5)
    b = torch.randn(1, offs[-1], rank, generator=gen, device=dev, dtype=dt).mul_(rank ** -0.5)
    base = torch.randn(TOKENS, offs[-1], generator=gen, device=dev, dtype=dt)
    chunk = 128  # _determine_chunk_size_for_tokens(256)
    i32 = dict(dtype=torch.int32, device=dev)
    info = LoRABatchInfo(
        use_cuda_graph=False, bs=1, num_segments=TOKENS // chunk, max_len=chunk,
        seg_indptr=torch.arange(0, TOKENS + 1, chunk, **i32), weight_indices=torch.zeros(TOKENS // chunk, **i32),
        lora_ranks=torch.tensor([rank], **i32), scalings=torch.tensor([2.0], device=dev),
        seg_lens=None, permutation=torch.arange(TOKENS, **i32))
    out = base.clone()
    y = chunked_sgmv_lora_shrink_forward(x=x, weights=a, batch_info=info, num_slices=S)
    chunked_sgmv_lora_expand_forward(
        x=y, weights=b, batch_info=info, slice_offsets=torch.tensor(offs, **i32),
        max_slice_size=max(WIDTHS), base_output=out, slice_offsets_cpu=torch.tensor(offs, dtype=torch.int32))
    torch.cuda.synchronize()
    ya = x.float() @ a[0].float().T                                  # [T, S * rank]
    delta = torch.cat([ya[:, i * rank:(i + 1) * rank] @ b[0, offs[i]:offs[i + 1]].float().T
                       for i in range(S)], dim=1) * 2.0
    return float(((out.float() - base.float()) - delta).norm() / delta.norm())


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 77
    from sglang.kernels.ops.lora.dense import chunked_sgmv_shrink

    kernel = chunked_sgmv_shrink._chunked_lora_shrink_kernel
    print(f"shrink kernel wrapper: {type(kernel).__name__}")
    gen = torch.Generator("cuda").manual_seed(0)
    fresh = run(8, gen)
    print(f"1. rank 8, fresh process:            rel err {fresh:.3g}")
    print(f"   cached shrink keys: {sorted(getattr(kernel, 'kernel_cache', {}))}")
    reused = run(64, gen)
    print(f"2. rank 64 after rank 8, same key:   rel err {reused:.3g}")
    if hasattr(kernel, "_clear_cache"):
        kernel._clear_cache()
    cleared = run(64, gen)
    print(f"3. rank 64 after _clear_cache():     rel err {cleared:.3g}")
    if not (fresh <= TOL and cleared <= TOL):
        return 2
    return 0 if reused <= TOL else 1


if __name__ == "__main__":
    sys.exit(main())
