"""Split-K bookkeeping for the shrink kernels: K ranges and the tile counters.

A shrink reduces over the hidden size (K = 4096..16384) into only S*R outputs
(48 for qkv at rank 16), so one CTA per output tile leaves most of the GPU
idle: llama3-8B qkv decode with 8 adapters ran 8 CTAs on 132 SMs. Split-K
gives each CTA K / SPLIT_K of the reduction; `_tiles.split_k_finish` sums the
partials in the last split to finish (serial fixup). Its counters live here.
"""

from __future__ import annotations

import torch

from ._config import cdiv


def k_per_split(K: int, split_k: int, block_k: int) -> int:
    """Columns per split, a multiple of block_k. Example: K=4096, 8 splits, 128 -> 512."""
    return cdiv(cdiv(K, split_k), block_k) * block_k


class SplitKWorkspace:
    """Per (device, stream): fp32 partials and zeroed int32 tile counters.

    Every launch leaves its counters at 0 again (the finishing split resets its
    tile's), and its partials are dead once it ends, so one pair of buffers
    serves every layer and every CUDA-graph replay on that stream. Per stream,
    because two kernels running at once on two streams must not share them.
    Buffers only grow; the lookup is one dict access on the launch path.
    """

    def __init__(self):
        self._buffers: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def get(self, device: torch.device, n_partial: int, n_counters: int):
        """(partials fp32 [>= n_partial], counters int32 [>= n_counters])."""
        index = device.index if device.index is not None else 0
        stream = torch._C._cuda_getCurrentRawStream(index) if device.type == "cuda" else 0
        key = (device.type, index, stream)
        part, counters = self._buffers.get(key, (None, None))
        if part is None or part.numel() < n_partial:
            part = torch.empty(max(n_partial, 1 << 20), dtype=torch.float32, device=device)
        if counters is None or counters.numel() < n_counters:
            counters = torch.zeros(max(n_counters, 4096), dtype=torch.int32, device=device)
        self._buffers[key] = (part, counters)
        return part, counters


WORKSPACE = SplitKWorkspace()
