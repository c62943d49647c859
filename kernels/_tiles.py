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
