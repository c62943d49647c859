"""Shared helpers for the kernel tests: tolerances, random pools, naive loops."""

import torch

# Relative tolerance per dtype, the one place it is defined. Compared as
# |got - want| <= TOL * max(1, max|want|)  (and rtol TOL elementwise).
TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 3e-2}


def assert_close(got, want, dtype=None):
    dtype = dtype or want.dtype
    tol = TOL[dtype]
    finite = want[torch.isfinite(want)]
    scale = max(1.0, float(finite.abs().max())) if finite.numel() else 1.0
    torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol * scale,
                               equal_nan=True)


def poison(*shape, dtype=torch.float32, device="cpu"):
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


def randn(*shape, dtype=torch.float32, device="cpu", gen=None):
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(device=device, dtype=dtype)


def dense_pool(n_slots, n_slices, R, K, out_total, ranks, packed=True, dtype=torch.float32,
               device="cpu", gen=None):
    """A [n_slots, S*R, K] and B [n_slots, out_total, R] laid out like SGLang's pool.

    Rows/columns beyond a slot's rank are NaN, so a kernel that reads them fails.
    """
    a = randn(n_slots, n_slices * R, K, dtype=dtype, device=device, gen=gen)
    b = randn(n_slots, out_total, R, dtype=dtype, device=device, gen=gen)
    for s, r in enumerate(ranks):
        r = min(int(r), R)
        rows = torch.zeros(n_slices * R, dtype=torch.bool)
        for i in range(n_slices):
            c = i * (r if packed else R)
            rows[c:c + r] = True
        a[s, ~rows.to(device)] = float("nan")
        b[s, :, r:] = float("nan")
    return a, b


def naive_rows(batch, T):
    """Per-row slot list by walking segments in python (independent of refs)."""
    slots = [-1] * T
    if batch.token_slots is not None:
        return [int(v) for v in batch.token_slots.tolist()][:T]
    indptr = batch.seg_indptr.tolist()
    perm = None if batch.permutation is None else batch.permutation.tolist()
    for i, s in enumerate(batch.seg_slots.tolist()):
        for j in range(indptr[i], indptr[i + 1]):
            slots[j if perm is None else perm[j]] = int(s)
    return slots


def naive_lora_delta(x, a, b, batch, offsets, packed=True):
    """Per-row python loop of the full shrink+expand delta (fp64), [T, offsets[-1]]."""
    T = x.shape[0]
    n = len(offsets) - 1
    R = b.shape[2]
    out = torch.zeros(T, offsets[-1], dtype=torch.float64)
    for t, s in enumerate(naive_rows(batch, T)):
        if s < 0:
            continue
        r = min(int(batch.ranks[s]), R)
        if r == 0:
            continue
        for i in range(n):
            c = i * (r if packed else R)
            h = a[s, c:c + r, :].double() @ x[t].double()
            lo, hi = offsets[i], offsets[i + 1]
            out[t, lo:hi] = float(batch.scalings[s]) * (b[s, lo:hi, :r].double() @ h)
    return out
