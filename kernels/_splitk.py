"""Split-K bookkeeping for the shrink kernels: K ranges and the tile counters.

A shrink reduces over the hidden size (K = 4096..16384) into only S*R outputs
(48 for qkv at rank 16), so one CTA per output tile leaves most of the GPU
idle: llama3-8B qkv decode with 8 adapters ran 8 CTAs on 132 SMs. Split-K
gives each CTA K / SPLIT_K of the reduction; `_tiles.split_k_finish` sums the
partials in the last split to finish (serial fixup). Its counters live here.
"""

from __future__ import annotations

import torch
import triton


def k_per_split(K: int, split_k: int, block_k: int) -> int:
    """Columns per split, a multiple of block_k. Example: K=4096, 8 splits, 128 -> 512."""
    return triton.cdiv(triton.cdiv(K, split_k), block_k) * block_k


class SplitKWorkspace:
    """Zeroed int32 tile counters, one buffer per (device, stream).

    Every launch leaves its counters at 0 again (the finishing split resets its
    tile's), so one buffer serves every layer and every CUDA-graph replay.
    Per stream, because two kernels running at once on two streams must not
    share a tile's counter.
    """

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def counters(self, device: torch.device, n: int) -> torch.Tensor:
        stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
        key = (device, stream)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = self._buffers[key] = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        return buf

    def partials(self, split_k: int, rows: int, cols: int, device) -> torch.Tensor:
        """fp32 [split_k, rows, cols] for the splits' partial tiles (never read unwritten)."""
        return torch.empty((split_k, rows, cols), dtype=torch.float32, device=device)


WORKSPACE = SplitKWorkspace()
