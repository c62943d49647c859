"""The inner loops the LoRA kernels share, as ``@triton.jit`` helpers.

Both walk the reduction dimension in BLOCK_K steps with masks, accumulate in
fp32 and expect the reduction dimension contiguous (stride 1) in both operands:
the pointers advance by BLOCK_K per step.
"""

import triton
import triton.language as tl


@triton.jit
def masked_tile_dot(lhs_ptrs, rhs_ptrs, m_mask, n_mask, k_len,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[BLOCK_M, BLOCK_N] = lhs[:, :k_len] @ rhs[:k_len, :].

    lhs_ptrs: [BLOCK_M, BLOCK_K] pointers, rhs_ptrs: [BLOCK_K, BLOCK_N] pointers;
    rows outside m_mask, columns outside n_mask and k >= k_len read as zero.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        k_mask = offs_k < k_len - k0
        lhs = tl.load(lhs_ptrs, mask=m_mask[:, None] & k_mask[None, :], other=0.0)
        rhs = tl.load(rhs_ptrs, mask=k_mask[:, None] & n_mask[None, :], other=0.0)
        acc += tl.dot(lhs, rhs)
        lhs_ptrs += BLOCK_K
        rhs_ptrs += BLOCK_K
    return acc


@triton.jit
def masked_row_gemv(mat_ptrs, vec_ptrs, row_mask, k_len, BLOCK_ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """acc[BLOCK_ROWS] = mat[:, :k_len] @ vec[:k_len], for one token (decode).

    mat_ptrs: [BLOCK_ROWS, BLOCK_K] pointers, vec_ptrs: [BLOCK_K] pointers.
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_ROWS,), dtype=tl.float32)
    for k0 in range(0, k_len, BLOCK_K):
        k_mask = offs_k < k_len - k0
        vec = tl.load(vec_ptrs, mask=k_mask, other=0.0).to(tl.float32)
        mat = tl.load(mat_ptrs, mask=row_mask[:, None] & k_mask[None, :], other=0.0)
        acc += tl.sum(mat.to(tl.float32) * vec[None, :], axis=1)
        mat_ptrs += BLOCK_K
        vec_ptrs += BLOCK_K
    return acc


@triton.jit
def split_k_range(pid_k, K, K_PER_SPLIT):
    """(k_start, k_len) of split pid_k: K_PER_SPLIT columns from pid_k * K_PER_SPLIT.

    Example: K=4096, 8 splits, K_PER_SPLIT=512 -> split 3 covers 1536:2048; a split
    past the end gets k_len <= 0 (it still takes part in the fixup, with zeros).
    """
    k_start = pid_k * K_PER_SPLIT
    return k_start, tl.minimum(K - k_start, K_PER_SPLIT)


@triton.jit
def split_k_finish(acc, y_ptrs, part_ptrs, stride_part, mask, counter_ptr, n_splits,
                   SPLIT: tl.constexpr):
    """Store one split's fp32 partial tile; the last split of the tile to finish
    sums all n_splits partials in split order and stores y (so the result does
    not depend on which split finished last: bitwise deterministic).

    Serial fixup (CUTLASS's split-K semaphore): partial stores, a CTA barrier,
    then one acq_rel atomic on the tile's counter. The split that reads
    n_splits - 1 owns the tile; it resets the counter to 0 for the next launch
    (or CUDA-graph replay). Counters must start at 0 (SplitKWorkspace).

    y_ptrs / part_ptrs: [BLOCK_M, BLOCK_N] pointers into y and into partial 0;
    partial p lives at part_ptrs + p * stride_part. SPLIT False (n_splits 1):
    a plain store of acc into y.
    """
    if not SPLIT:
        tl.store(y_ptrs, acc.to(y_ptrs.dtype.element_ty), mask=mask)
    else:
        pid_k = tl.program_id(2)
        tl.store(part_ptrs + pid_k * stride_part, acc, mask=mask)
        tl.debug_barrier()
        done = tl.atomic_add(counter_ptr, 1, sem="acq_rel", scope="gpu")
        if done == n_splits - 1:
            total = tl.zeros(acc.shape, dtype=tl.float32)
            for p in range(0, n_splits):
                total += tl.load(part_ptrs + p * stride_part, mask=mask, other=0.0,
                                 cache_modifier=".cg")
            tl.store(y_ptrs, total.to(y_ptrs.dtype.element_ty), mask=mask)
            tl.atomic_xchg(counter_ptr, 0)
