"""SGLang 0.5.23: fused_moe_lora reads the wrong adapter (or faults) once lora_id * stride(0) >= 2**31.

Users reach it through SGLang's own serving path: LoRAMemoryPool allocates the routed
experts' gate_up A buffer per layer as [max_loras_per_batch, E, 2 * max_lora_rank, hidden]
(mem_pool.py get_lora_A_shape), and lora_moe_runners._add_lora_gate_up_delta hands the
kernel two views of it, A[:, :, :r] and A[:, :, r:2r], whose stride(0) is E * 2r * hidden.
_fused_moe_lora_kernel then forms `lora_id * stride_bl` (fused_moe_lora_kernel.py:156-158)
from an int32 load and an int32 argument, so the product wraps past 2**31 - 1 and the
weights are read from before the buffer: a wrong delta or an illegal memory access.

Smallest case used here, DeepSeek-V3's real layer (E = 256, hidden = 7168, rank 16):
stride(0) = 256 * 32 * 7168 = 58,720,256, so slot 36 still fits (2,113,929,216) and slot 37
does not (2,172,649,472). A pool of 38 slots is the smallest that has slot 37: 4.5 GB for
this one layer's A. One token, top 8, routed to slot 36 (control) and then to slot 37, with
the alignment SGLang builds for so small a batch (_naive_moe_lora_align_block_size, taken
from lora_moe_runners.py's source) and the arguments _add_lora_gate_up_delta passes.

    python bench/gpu/repro/fused_moe_lora_int32.py       # needs CUDA, about 6 GB free

Exit 0: both slots match the fp32 reference (fixed). Exit 1: the bug (wrong slot 37, or
a CUDA error). Exit 2: the control slot 36 is wrong too (something else is broken).
"""

from __future__ import annotations

import __future__
import ast
import importlib.util
import sys

import torch

E, HIDDEN, W, RANK, TOP_K = 256, 7168, 2048, 16, 8  # DeepSeek-V3 routed experts, TP 1
SLOTS = 38                                           # slot 37 is the first to overflow
TOL = 3e-2                                           # bf16


def sglang_functions(module: str, names: tuple, **globs) -> list:
    """Functions of an SGLang module compiled from its file (importing it pulls in sgl_kernel)."""
    spec = importlib.util.find_spec(module)
    tree = ast.parse(open(spec.origin).read(), spec.origin)
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    namespace = {"torch": torch, **globs}
    exec(compile(ast.Module(body=body, type_ignores=[]), spec.origin, "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), namespace)
    return [namespace[n] for n in names]


def main() -> int:
    if not torch.cuda.is_available():
        print("needs a CUDA device")
        return 77
    from sglang.kernels.ops.lora.moe.fused_moe_lora_kernel import fused_moe_lora
    from sglang.srt.utils import next_power_of_2

    align, block_config = sglang_functions(
        "sglang.srt.lora.lora_moe_runners",
        ("_naive_moe_lora_align_block_size", "_get_moe_lora_block_config"),
        next_power_of_2=next_power_of_2)
    dev, dt = torch.device("cuda"), torch.bfloat16
    gen, cpu_gen = torch.Generator(dev).manual_seed(0), torch.Generator().manual_seed(0)
    r = RANK
    # the pool's buffers for one layer, zeros as LoRAMemoryPool.init_buffers allocates them
    A = torch.zeros(SLOTS, E, 2 * r, HIDDEN, dtype=dt, device=dev)
    B = torch.zeros(SLOTS, E, 2 * W, r, dtype=dt, device=dev)
    print(f"A {tuple(A.shape)} ({A.numel() * 2 / 2**30:.2f} GiB), view stride(0) "
          f"{A[:, :, :r].stride(0):,}; slot 36 -> {36 * A.stride(0):,}, "
          f"slot 37 -> {37 * A.stride(0):,} (int32 max {2**31 - 1:,})")
    x = torch.randn(1, HIDDEN, generator=gen, device=dev, dtype=dt)
    topk_ids = torch.randperm(E, generator=cpu_gen)[:TOP_K].view(1, TOP_K).int().to(dev)
    topk_weights = torch.rand(1, TOP_K, generator=gen, device=dev)
    blk = block_config(r)
    bm = 64  # _compute_lora_alignment's BLOCK_SIZE_M
    padded = -(-(topk_ids.numel() + E * (bm - 1)) // bm) * bm
    lora_a = [A[:, :, :r, :], A[:, :, r:, :]]        # as _add_lora_gate_up_delta slices them
    lora_b = [B[:, :, :W, :], B[:, :, W:, :]]

    failed = {}
    for slot in (36, 37):
        for t in (A, B):  # only this slot's weights are non-zero
            t[slot].copy_(torch.randn(t[slot].shape, generator=gen, device=dev, dtype=dt)
                          .mul_(t.shape[-1] ** -0.5))
        enabled = torch.zeros(SLOTS, dtype=torch.int32, device=dev)
        enabled[slot] = 1
        sorted_ids, expert_ids, n_post = align(
            topk_ids, torch.tensor([0, 1], dtype=torch.int32), torch.tensor([slot], dtype=torch.int32),
            E, bm, SLOTS, padded, padded // bm, enabled, dev)
        out = torch.zeros(1, TOP_K, 2 * W, dtype=dt, device=dev)
        try:
            fused_moe_lora(
                output=out, qcurr_hidden_states=x, lora_a_stacked=lora_a, lora_b_stacked=lora_b,
                topk_weights=topk_weights, sorted_token_ids=sorted_ids.view(SLOTS, -1),
                expert_ids=expert_ids.view(SLOTS, -1), num_tokens_post_padded=n_post,
                max_lora_rank=r, top_k_num=TOP_K,
                lora_ids=torch.arange(SLOTS, dtype=torch.int32, device=dev), adapter_enabled=enabled,
                shrink_block_size_m=64, shrink_block_size_n=blk["shrink_block_size_n"],
                shrink_block_size_k=64, shrink_group_size_m=8, shrink_num_warps=4,
                shrink_num_stages=2, shrink_split_k=1, expand_block_size_m=64,
                expand_block_size_n=64, expand_block_size_k=blk["expand_block_size_k"],
                expand_group_size_m=8, expand_num_warps=4, expand_num_stages=2, expand_split_k=1)
            torch.cuda.synchronize()
        except Exception as e:  # noqa: BLE001 - an illegal address is the bug showing
            print(f"slot {slot}: CUDA error: {type(e).__name__}: {str(e).splitlines()[0]}")
            return 1
        experts = topk_ids[0].long()
        a_e, b_e = A[slot, experts].float(), B[slot, experts].float()   # [k, 2r, H], [k, 2W, r]
        ref = torch.cat([torch.einsum("kwr,kr->kw", b_e[:, :W], a_e[:, :r] @ x[0].float()),
                         torch.einsum("kwr,kr->kw", b_e[:, W:], a_e[:, r:] @ x[0].float())], dim=1)
        err = float((out[0].float() - ref).norm() / ref.norm())
        ok = err <= TOL
        print(f"slot {slot}: rel err {err:.3g} -> {'ok' if ok else 'WRONG'}")
        if not ok:
            failed[slot] = err
        for t in (A, B):
            t[slot].zero_()
    if 36 in failed:
        return 2
    return 1 if 37 in failed else 0


if __name__ == "__main__":
    sys.exit(main())
