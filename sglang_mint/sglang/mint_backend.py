"""``MintLoRABackend``: SGLang's LoRA backend interface running sglang-mint's kernels.

It subclasses SGLang's ``TritonLoRABackend`` and keeps everything that is not a
matmul (``prepare_lora_batch``, CUDA-graph buffers, ``_sgemm_info``). Each dense
LoRA matmul delegates to ``kernels/layer_ops.py`` over the ``LoraBatch`` planned
from SGLang's ``LoRABatchInfo``, or to the superclass where the device's routes
table says SGLang's kernels are faster (``kernels/routes.py``). The method mapping
is docs/kernels.md; the MoE expert path is ``mint_moe.py``.
"""

from __future__ import annotations

import logging
from typing import Optional

import torch
from sglang.srt.lora.backend.triton_backend import TritonLoRABackend
from sglang.srt.lora.utils import LoRABatchInfo
from sglang.srt.runtime_context import LoRABatchLayout

from sglang_mint.kernels import LoraBatch, routes
from sglang_mint.kernels.dispatch import kernel_path, use_triton
from sglang_mint.kernels.layer_ops import (BatchPlans, SingleOffsets, equal_halves, lora_a, lora_b,
                                           lora_embedding_a, lora_stacked, widest_slice)
from sglang_mint.sglang.backend import MINT_BACKEND

logger = logging.getLogger("sglang_mint")


def lora_batch_from_info(info: LoRABatchInfo) -> LoraBatch:
    """The mint routing form of one SGLang ``LoRABatchInfo`` (``LoraBatch.routing``, no host sync)."""
    n_seg = info.num_segments if info.num_segments is not None else info.bs
    return LoraBatch.routing(info.lora_ranks, info.scalings, info.seg_indptr, info.weight_indices, n_seg,
                             info.expected_tokens, info.max_len, info.permutation)


class MintLoRABackend(TritonLoRABackend):
    name = MINT_BACKEND
    supports_prefill_cuda_graph = False  # the segment grid follows the longest segment (docs/kernels.md)

    def __init__(self, max_loras_per_batch: int, device: torch.device, **kwargs):
        super().__init__(max_loras_per_batch, device, **kwargs)
        self.moe_kernel_calls = 0  # our MoE-expert LoRA kernel launches (mint_moe.py), for get_internal_state
        self._planned = BatchPlans(lora_batch_from_info)  # the LoRABatchInfos of the current forward
        self._single_offsets = SingleOffsets()
        self._routes: dict[tuple, bool] = {}  # shape class -> SGLang's kernels run it (kernels/routes.py)
        # The route of the last run_lora_a_sgemm, which the run_lora_b_sgemm after it follows.
        self._b_follows: Optional[bool] = None
        logger.info("mint LoRA backend on %s: %s", device, kernel_path(device))
        logger.info("mint LoRA kernels: %s", routes.summary(device))

    # ---- planning -------------------------------------------------------
    def reset_batch_state(self):
        super().reset_batch_state()
        self._planned.clear()
        self._b_follows = None

    def prepare_lora_batch(self, *args, **kwargs):
        super().prepare_lora_batch(*args, **kwargs)
        self._planned.clear()
        self._plan(self.batch_info)

    def prepare_global_lora_batch(self, forward_batch) -> None:
        super().prepare_global_lora_batch(forward_batch)
        self._planned.clear()

    def prepare_lora_token_segments(self, **kwargs) -> None:
        super().prepare_lora_token_segments(**kwargs)
        self._planned.clear()

    def _plan(self, info: Optional[LoRABatchInfo]) -> LoraBatch:
        assert info is not None, "LoRA kernel invoked with no prepared batch (SGLang's layers gate on lora_active)"
        return self._planned.plan(info)

    def _batch(self, pruned_batch_info: Optional[LoRABatchInfo] = None) -> LoraBatch:
        return self._plan(pruned_batch_info if pruned_batch_info is not None else self.get_batch_info())

    # ---- dense LoRA ops -------------------------------------------------
    def _route(self, method: str, x: torch.Tensor, S: int, K: int, R: int, batch: LoraBatch) -> bool:
        """True: run SGLang's Triton kernels (the superclass method) for this call."""
        return routes.takes_sglang_triton(self._routes, self.device, method, x, S, K, R, batch.is_bgmv)

    def run_lora_a_sgemm(self, x: torch.Tensor, weights: torch.Tensor, pruned_batch_info: LoRABatchInfo = None,
                         stack_num: int = 1, *args, **kwargs) -> torch.Tensor:
        """[T, stack_num*R] = x @ A[slot]^T; zeros where a row has no adapter."""
        T, N = x.shape[0], weights.shape[1]
        self._b_follows = False
        batch = None
        if T and N:
            batch = self._batch(pruned_batch_info)
            # One layer's A and B run the same kernels, but b sees only x of width R, not K: SGLang's
            # layers call b right after a, so a records its route and b follows it (the embedding's b
            # comes after run_lora_a_embedding, which clears it: that b runs ours).
            self._b_follows = self._route("a_sgemm", x, stack_num, x.shape[-1], N // max(1, stack_num), batch)
            if self._b_follows:
                return super().run_lora_a_sgemm(x, weights, pruned_batch_info, stack_num, *args, **kwargs)
        return lora_a(x, weights, batch, stack_num)

    def run_lora_b_sgemm(self, x: torch.Tensor, weights: torch.Tensor, base_output: torch.Tensor = None,
                         pruned_batch_info: LoRABatchInfo = None, *args, output_offset: Optional[torch.Tensor] = None,
                         output_offset_cpu: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        """base_output[:, :N] += scaling[slot] * x @ B[slot]^T (N = weights.shape[1])."""
        theirs, self._b_follows = self._b_follows, None
        if theirs:
            return super().run_lora_b_sgemm(x, weights, base_output, pruned_batch_info, *args, **kwargs)
        batch = self._batch(pruned_batch_info) if x.shape[0] and weights.shape[1] else None
        return lora_b(x, weights, base_output, batch, output_offset, output_offset_cpu, self._single_offsets)

    def run_qkv_lora(self, x: torch.Tensor, qkv_lora_a: torch.Tensor, qkv_lora_b: torch.Tensor,
                     output_offset: torch.Tensor, max_qkv_out_dim: int = 0, base_output: torch.Tensor = None,
                     n_slices: int = 3, *args, output_offset_cpu: Optional[torch.Tensor] = None,
                     **kwargs) -> torch.Tensor:
        """Stacked slices of unequal widths: q/k/v, or MLA's q_a (1536) + kv_a (576)."""
        assert isinstance(qkv_lora_b, torch.Tensor), "split q/kv B buffers are not supported"
        if x.shape[0] and self._route("qkv", x, n_slices, x.shape[-1], qkv_lora_b.shape[-1], self._batch()):
            if not max_qkv_out_dim:  # SGLang's layers pass it; its kernel's grid needs it
                max_qkv_out_dim = widest_slice(output_offset_cpu if output_offset_cpu is not None else output_offset)
            return super().run_qkv_lora(x, qkv_lora_a, qkv_lora_b, output_offset,
                                        max_qkv_out_dim, base_output, n_slices, *args, **kwargs)
        return lora_stacked(x, qkv_lora_a, qkv_lora_b, n_slices, output_offset, output_offset_cpu,
                            base_output, self._stacked_batch(x, qkv_lora_a))

    def run_gate_up_lora(self, x: torch.Tensor, gate_up_lora_a: torch.Tensor, gate_up_lora_b: torch.Tensor,
                         base_output: torch.Tensor = None, *args, output_offset: Optional[torch.Tensor] = None,
                         output_offset_cpu: Optional[torch.Tensor] = None, **kwargs) -> torch.Tensor:
        assert isinstance(gate_up_lora_b, torch.Tensor), "split gate/up B buffers are not supported"
        if x.shape[0] and self._route("gate_up", x, 2, x.shape[-1], gate_up_lora_b.shape[-1], self._batch()):
            return super().run_gate_up_lora(x, gate_up_lora_a, gate_up_lora_b, base_output, *args, **kwargs)
        if output_offset is None or output_offset_cpu is None:
            output_offset, output_offset_cpu = equal_halves(gate_up_lora_b.shape[1], x.device)
        return lora_stacked(x, gate_up_lora_a, gate_up_lora_b, 2, output_offset, output_offset_cpu,
                            base_output, self._stacked_batch(x, gate_up_lora_a))

    def _stacked_batch(self, x: torch.Tensor, a: torch.Tensor) -> Optional[LoraBatch]:
        return self._batch() if x.shape[0] and a.shape[1] else None

    # ---- embeddings -----------------------------------------------------
    def run_lora_a_embedding(self, input_ids: torch.Tensor, weights: torch.Tensor, vocab_size: int,
                             extra_embeddings: torch.Tensor = None, *args, **kwargs) -> torch.Tensor:
        """[T, R]: column `token` of A[slot]: SGLang's Triton gather on CUDA / the
        interpreter, elsewhere the same semantics in torch (layer_ops.lora_embedding_a)."""
        self._b_follows = None  # the run_lora_b_sgemm after this one runs ours
        if use_triton(weights):
            return super().run_lora_a_embedding(input_ids, weights, vocab_size, extra_embeddings, *args, **kwargs)
        batch = self._plan(self.get_batch_info(LoRABatchLayout.DP_LOCAL))
        return lora_embedding_a(input_ids, weights, vocab_size, extra_embeddings, batch)
