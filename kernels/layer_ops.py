"""The LoRA work of one layer call over a planned ``LoraBatch``: what a LoRA backend runs.

Plan once per batch, run once per layer: a backend turns each of its engine's
batch descriptions (SGLang's ``LoRABatchInfo``: the batch's, the DP-global one,
the pruned lm_head ones) into one ``LoraBatch`` the first time a layer asks
(``BatchPlans``), and every later layer of the same forward gets that object.
Each layer call is then one function here, which runs ``dispatch.lora_shrink``
/ ``lora_expand``: our Triton kernels on CUDA or under ``TRITON_INTERPRET=1``,
their torch ``_ref`` otherwise.

    lora_a            y = x @ A[slot]^T, a fresh [T, n_slices*R], zeros where a row has no adapter
    lora_b            out[:, 0:N] += scaling[slot] * x @ B[slot]^T        (N = B.shape[-2])
    lora_stacked      lora_a then lora_b by slice offsets: qkv, gate_up, MLA's q_a (1536) + kv_a (576)
    lora_embedding_a  y[t] = A[slot][:, token[t]] (a gather, no matmul), in torch

Shape: x [T, K]; A [n_slots, n_slices*R, K]; B [n_slots, N, R]; out [T, N].
"""

from __future__ import annotations

from typing import Callable

import torch

from .batch import LoraBatch
from .dispatch import lora_expand, lora_shrink


class BatchPlans:
    """The ``LoraBatch`` of each batch description seen in the current forward.

    ``plan(info)`` makes it with ``make(info)`` the first time and returns that
    object afterwards; ``clear()`` when a new batch is prepared. Descriptions
    are compared by identity; holding each one keeps that identity valid.
    Example: a forward whose layers route by the batch's description and whose
    lm_head routes by a pruned one plans two ``LoraBatch`` objects, whatever
    the number of layers.
    """

    def __init__(self, make: Callable[[object], LoraBatch]):
        self._make = make
        self._planned: list[tuple[object, LoraBatch]] = []

    def plan(self, info) -> LoraBatch:
        for known, batch in self._planned:
            if known is info:
                return batch
        batch = self._make(info)
        self._planned.append((info, batch))
        return batch

    def clear(self) -> None:
        self._planned.clear()


class SingleOffsets:
    """[0, N] slice offsets of single-projection layers that pass none: one small
    device tensor per (N, device), made once and read by every later call."""

    def __init__(self):
        self._made: dict[tuple[int, torch.device], torch.Tensor] = {}

    def get(self, n_out: int, device) -> torch.Tensor:
        key = (int(n_out), torch.device(device))
        t = self._made.get(key)
        if t is None:
            t = self._made[key] = torch.tensor([0, n_out], dtype=torch.int32, device=device)
        return t


def widest_slice(offsets) -> int:
    """The widest of the stacked slices ``offsets`` bound: [0, 1536, 2112] -> 1536."""
    offs = [int(v) for v in offsets]
    return max(hi - lo for lo, hi in zip(offs, offs[1:]))


def equal_halves(n_out: int, device) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """gate_up's offsets when a caller passes none: N = 2I -> ([0, I, 2I] on device, (0, I, 2I))."""
    inter = n_out // 2
    offsets_cpu = (0, inter, 2 * inter)
    return torch.tensor(offsets_cpu, dtype=torch.int32, device=device), offsets_cpu


def lora_a(x: torch.Tensor, a: torch.Tensor, batch: LoraBatch | None, n_slices: int = 1) -> torch.Tensor:
    """Semantics: y = zeros(T, N); y[t] = x[t] @ a[slot(t)]^T for rows with an adapter.

    Shape: x [T, K], a [n_slots, N, K] (N = n_slices*R) -> y [T, N]. ``batch`` may be
    None when T or N is 0.
    """
    x = unit_col(x)
    T, N = x.shape[0], a.shape[1]
    # Zeros, not empty: this tensor leaves the backend (TP layers all-reduce it).
    y = torch.zeros((T, N), dtype=x.dtype, device=x.device)
    if T and N:
        lora_shrink(x, a, y, batch, n_slices=n_slices)
    return y


def lora_b(x: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None, batch: LoraBatch | None,
           offsets: torch.Tensor | None, offsets_cpu, single: SingleOffsets) -> torch.Tensor:
    """Semantics: out[:, :N] += scalings[slot] * x @ b[slot]^T, N = b.shape[1]; out is a fresh
    zeros [T, N] when None. Shape: x [T, R], b [n_slots, N, R].

    Every single-projection caller's offsets are [0, N] (SGLang's ReplicatedLinearWithLoRA
    passes no host copy); without both, ``single`` gives that, not a device read.
    """
    n_out = b.shape[1]
    if out is None:
        out = torch.zeros((x.shape[0], n_out), dtype=x.dtype, device=x.device)
    if x.shape[0] == 0 or n_out == 0:
        return out
    if offsets is None or offsets_cpu is None:
        offsets, offsets_cpu = single.get(n_out, x.device), (0, n_out)
    lora_expand(unit_col(x), b, out, batch, offsets, offsets_cpu)
    return out


def lora_stacked(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, n_slices: int, offsets: torch.Tensor,
                 offsets_cpu, out: torch.Tensor | None, batch: LoraBatch | None) -> torch.Tensor:
    """Stacked slices of unequal widths: out[:, o[i]:o[i+1]] += scaling * (x @ A_i^T) @ B_i^T.

    Shape: a [n_slots, n_slices*R, K], b [n_slots, o[-1], R], offsets [n_slices + 1]
    (e.g. MLA's q_a + kv_a: [0, 1536, 2112]). ``batch`` may be None when T or a's rows are 0.
    """
    x = unit_col(x)
    T = x.shape[0]
    if offsets_cpu is None:
        offsets_cpu = offsets.tolist()  # only callers outside SGLang's layers get here
    n_out = int(offsets_cpu[-1])
    if out is None:
        out = torch.zeros((T, n_out), dtype=x.dtype, device=x.device)
    if T == 0 or a.shape[1] == 0:
        return out
    # Private intermediate: expand reads only the columns shrink wrote.
    y = torch.empty((T, a.shape[1]), dtype=x.dtype, device=x.device)
    lora_shrink(x, a, y, batch, n_slices=n_slices)
    lora_expand(y, b, out, batch, offsets, offsets_cpu)
    return out


def lora_embedding_a(input_ids: torch.Tensor, a: torch.Tensor, vocab_size: int,
                     extra_embeddings: torch.Tensor | None, batch: LoraBatch) -> torch.Tensor:
    """[T, R]: column ``token`` of A[slot] (a gather, no matmul), in torch.

    Semantics: rows of rank r get A[slot, :r, token] (or the adapter's extra-token
    row for token >= vocab_size), the rest zeros. Shape: input_ids [T], a [n_slots, R,
    vocab_size], extra_embeddings [n_slots, n_extra, R] or None.
    """
    T, R = input_ids.shape[0], a.shape[1]
    out = torch.zeros((T, R), dtype=a.dtype, device=a.device)
    rows, slots = batch.live_rows(T)
    if rows.numel() == 0 or R == 0:
        return out
    tok = input_ids[rows].long()
    vals = a[slots, :, tok.clamp(max=vocab_size - 1)]            # [L, R]
    if extra_embeddings is not None:
        extra = tok >= vocab_size
        if bool(extra.any()):
            vals[extra] = extra_embeddings[slots[extra], tok[extra] - vocab_size].to(vals.dtype)
    ranks = batch.ranks.long()[slots]
    keep = torch.arange(R, device=out.device)[None, :] < ranks[:, None]
    out[rows] = torch.where(keep, vals, torch.zeros_like(vals))
    return out


def unit_col(t: torch.Tensor) -> torch.Tensor:
    """``t`` with a unit stride in its last dimension (the kernels index rows by stride)."""
    return t if t.stride(-1) == 1 else t.contiguous()
