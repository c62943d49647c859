"""Per-batch LoRA routing metadata, shared by every dense LoRA op.

Plan once per batch, run once per layer: the backend fills one `LoraBatch`
per forward (ideally into tensors it allocated once, so CUDA graphs replay),
and every layer's shrink/expand reads it.

Two forms (exactly one is set):

* segments (sgmv, prefill): `seg_indptr`, `seg_slots`, optional
  `permutation`. Segment i covers LOGICAL rows seg_indptr[i]:seg_indptr[i+1];
  logical row j is physical token row `permutation[j]` (identity when
  permutation is None). This is SGLang's LoRABatchInfo: seg_indptr,
  weight_indices, permutation. Example: slots [-1, 0, 2] and lengths
  [3, 10, 5] give seg_indptr [0, 3, 13, 18]; rows 0-2 get no adapter.
* per-token (bgmv, decode): `token_slots[t]` is the slot of physical row t.

Slot -1 means no adapter: that row's output is left untouched. A slot whose
rank is 0 is treated the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch


@dataclass(frozen=True)
class LoraBatch:
    """Shape:
    ranks        [n_slots] int32/int64   rank of each pool slot (0 = empty)
    scalings     [n_slots] float32       alpha / r of each pool slot
    seg_indptr   [n_seg + 1] int32       segment boundaries (logical rows)
    seg_slots    [n_seg] int32           pool slot per segment, -1 = none
    permutation  [n_logical] int32       logical row -> physical row, or None
    token_slots  [n_tokens] int32        pool slot per physical row, -1 = none
    max_seg_len  host int                longest segment (sgmv grid size)
    rows_hint    host int                rows a segment is expected to have, for the
                                         block sizes (0: max_seg_len); see by_slot

    Frozen: a launcher's plan key reads ``launch_key``, made once from these fields.
    """

    ranks: torch.Tensor
    scalings: torch.Tensor
    seg_indptr: Optional[torch.Tensor] = None
    seg_slots: Optional[torch.Tensor] = None
    permutation: Optional[torch.Tensor] = None
    token_slots: Optional[torch.Tensor] = None
    max_seg_len: int = 0
    rows_hint: int = 0

    def __post_init__(self):
        object.__setattr__(self, "_by_slot", {})
        for name in ("max_seg_len", "rows_hint"):  # Python ints: they size grids and key launch plans
            object.__setattr__(self, name, int(getattr(self, name)))
        seg = self.seg_indptr is not None
        if seg == (self.token_slots is not None):
            raise ValueError("LoraBatch needs exactly one of seg_indptr/token_slots")
        if seg and self.seg_slots is None:
            raise ValueError("seg_indptr given without seg_slots")
        if seg and self.seg_indptr.numel() != self.seg_slots.numel() + 1:
            raise ValueError("seg_indptr must have len(seg_slots) + 1 entries")
        tensors = (self.ranks, self.scalings, self.seg_indptr, self.seg_slots, self.permutation, self.token_slots)
        # what a launch of the segment kernels takes from this batch besides its tensors' addresses
        object.__setattr__(self, "launch_key", (
            self.num_segments, self.max_seg_len, self.rows_hint, self.permutation is not None,
            tuple(None if t is None else t.dtype for t in tensors)))

    @classmethod
    def routing(cls, ranks, scalings, seg_indptr, slots, n_seg, n_tokens, max_seg_len,
                permutation=None) -> "LoraBatch":
        """The form an engine's batch of ``n_seg`` segments over ``n_tokens`` rows runs in (no host sync).

        One token per segment (decode, DP-gathered token rows, a pruned lm_head of
        one row per request) gives the per-token form, whose kernels need no sort
        and whose grid depends only on the token count, so it replays in a CUDA
        graph. Everything else keeps the segments (and permutation). Example: a
        decode batch of 3 requests with slots [2, 0, 2] becomes ``token_slots=[2, 0, 2]``;
        a prefill of 2 requests of 5 and 3 tokens with slots [1, 3] becomes
        ``seg_indptr=[0, 5, 8]``, ``seg_slots=[1, 3]``, ``max_seg_len=5``.
        """
        if max_seg_len == 1 and permutation is None and n_tokens == n_seg:
            return cls(ranks=ranks, scalings=scalings, token_slots=slots)
        return cls(ranks=ranks, scalings=scalings, seg_indptr=seg_indptr[: n_seg + 1], seg_slots=slots[:n_seg],
                   permutation=permutation, max_seg_len=int(max_seg_len or 0))

    @classmethod
    def from_segments(cls, seg_lens, seg_slots, ranks, scalings, device=None,
                      permutation=None) -> "LoraBatch":
        """Convenience builder from host lists (tests, benchmarks, CPU path)."""
        device = device or torch.device("cpu")
        lens = torch.as_tensor(list(seg_lens), dtype=torch.int32)
        indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
        indptr[1:] = torch.cumsum(lens, 0)
        return cls(
            ranks=torch.as_tensor(ranks, dtype=torch.int32, device=device),
            scalings=torch.as_tensor(scalings, dtype=torch.float32, device=device),
            seg_indptr=indptr.to(device),
            seg_slots=torch.as_tensor(list(seg_slots), dtype=torch.int32, device=device),
            permutation=None if permutation is None else
            torch.as_tensor(permutation, dtype=torch.int32, device=device),
            max_seg_len=int(lens.max()) if len(lens) else 0,
        )

    @classmethod
    def from_token_slots(cls, token_slots, ranks, scalings, device=None) -> "LoraBatch":
        device = device or torch.device("cpu")
        return cls(
            ranks=torch.as_tensor(ranks, dtype=torch.int32, device=device),
            scalings=torch.as_tensor(scalings, dtype=torch.float32, device=device),
            token_slots=torch.as_tensor(token_slots, dtype=torch.int32, device=device),
        )

    def by_slot(self, n_rows: int) -> "LoraBatch":
        """The per-token form's first n_rows as segments, one per pool slot, on the device.

        Rows are ordered by slot, stably (the permutation), and slot s's segment
        is its run in that order, so the segment kernels read each adapter's
        weights once per tile instead of once per token. Elementwise ops,
        cumsums and a scatter only (no sort, no host sync): a decode CUDA graph
        captures it and replays it after SGLang refills the slot tensor. The
        grid is sized for the worst case (max_seg_len = n_rows, all rows on one
        slot); block sizes are chosen for the average (rows_hint). Made once per
        batch and row count, then every layer reuses it.
        Example: token_slots [2, 0, -1, 2], 3 slots -> permutation [2, 1, 0, 3],
        seg_indptr [1, 2, 2, 4], seg_slots [0, 1, 2].
        """
        if self.token_slots is None:
            raise ValueError("by_slot needs the per-token form")
        seg = self._by_slot.get(n_rows)
        if seg is None:
            dev = self.token_slots.device
            n = self.ranks.numel()
            cls = self.token_slots[:n_rows].long() + 1        # 0: no adapter, s + 1: slot s
            onehot = (cls[:, None] == torch.arange(n + 1, device=dev)[None, :]).int()
            ends = torch.cumsum(onehot.sum(0), 0)              # [n + 1] run ends, in slot order
            within = torch.cumsum(onehot, 0).gather(1, cls[:, None]).squeeze(1) - 1
            dest = ends[cls] - onehot.sum(0)[cls] + within     # where row t goes
            perm = torch.empty(n_rows, dtype=torch.int64, device=dev)
            perm.scatter_(0, dest, torch.arange(n_rows, device=dev))
            seg = self._by_slot[n_rows] = LoraBatch(
                ranks=self.ranks, scalings=self.scalings,
                seg_indptr=ends.to(torch.int32), seg_slots=torch.arange(n, dtype=torch.int32, device=dev),
                permutation=perm.to(torch.int32), max_seg_len=n_rows,
                rows_hint=-(-n_rows // max(1, n)))
        return seg

    @property
    def is_bgmv(self) -> bool:
        return self.token_slots is not None

    @property
    def num_segments(self) -> int:
        return 0 if self.seg_slots is None else self.seg_slots.numel()

    def slot_per_row(self, n_rows: int) -> torch.Tensor:
        """int64 [n_rows]: the slot of each physical row (-1: none/uncovered).

        Used by the references only (it may sync with the device).
        """
        if self.token_slots is not None:
            return self.token_slots[:n_rows].long()
        out = torch.full((n_rows,), -1, dtype=torch.long, device=self.seg_slots.device)
        lens = (self.seg_indptr[1:] - self.seg_indptr[:-1]).long()
        logical_slots = torch.repeat_interleave(self.seg_slots.long(), lens)
        start = int(self.seg_indptr[0])
        logical = torch.arange(start, start + logical_slots.numel(), device=out.device)
        rows = logical if self.permutation is None else self.permutation[logical].long()
        out[rows] = logical_slots
        return out

    def live_rows(self, n_rows: int):
        """(rows, slots) of physical rows that get a LoRA delta (ref helper)."""
        slots = self.slot_per_row(n_rows)
        ranks = self.ranks.long().to(slots.device)
        live = slots >= 0
        live &= ranks[slots.clamp(min=0)] > 0
        rows = live.nonzero().flatten()
        return rows, slots[rows]
