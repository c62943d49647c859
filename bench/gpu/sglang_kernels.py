"""SGLang 0.5.23's LoRA kernels on kernel_bench's tensors, batched as SGLang's backends batch.

    dense(d)   -> ({"sglang_csgmv": fn, "sglang_triton": fn}, why)
    experts(d) -> ({"sglang_fused_moe_lora": fn}, why)

`d` is the shape's state from kernel_bench.build (the
same x, A, B, output and token-to-adapter map our kernels get). Each fn adds
the LoRA delta into d["out"], as ours do. Everything host-side (batch infos,
csgmv chunks, MoE alignment, offset lists) is built here, once per shape;
SGLang's launchers still allocate their own intermediates, as in serving.
When a module does not import, the dict is empty and `why` says what failed.

Batching, as each backend's prepare_lora_batch does it (not under CUDA graphs):
  csgmv   tokens sorted by adapter (permutation), each adapter's run cut in
          chunks of 16 / 32 / 128 tokens for < 64 / < 256 / more tokens;
  triton  prefill: one segment per request; decode: tokens sorted by adapter,
          one segment per pool slot, max_len = the batch's token count;
  MoE     SGLang's alignment (_naive_moe_lora_align_block_size, the form its
          CUDA alignment also fills), block sizes from _get_moe_lora_block_config,
          both compiled from lora_moe_runners.py's source (see _from_source).

One server process has one max_lora_rank; kernel_bench runs ranks 16, 64 and 8 in one
process. SGLang keys its compiled csgmv shrink by (K, NUM_SLICES, BLOCK_M) only
(chunked_sgmv_shrink.py:11-13), not by N = NUM_SLICES * rank, so dense() forgets that
kernel's cached launches per shape, as a fresh server per rank would (see
_forget_csgmv_shrink_launches). experts() leaves out shapes whose buffers are too large
for the int32 offsets of SGLang's fused MoE LoRA kernel (see _moe_int32_overflow and
bench/gpu/repro/README.md): that kernel reads out of bounds there, in serving too.
"""

from __future__ import annotations

import torch


def _from_source(module: str, names: tuple, **globs) -> list:
    """Functions of an SGLang module compiled from its file, without running the module.

    sglang.srt.lora.lora_moe_runners imports the model executor, which on CUDA imports
    sgl_kernel (not carried); its alignment and block-size functions need only torch.
    """
    import __future__
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    with open(spec.origin) as f:
        tree = ast.parse(f.read(), spec.origin)
    body = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]
    namespace = {"torch": torch, **globs}
    exec(compile(ast.Module(body=body, type_ignores=[]), spec.origin, "exec",
                 flags=__future__.annotations.compiler_flag, dont_inherit=True), namespace)
    return [namespace[n] for n in names]


def _forget_csgmv_shrink_launches(shrink_module) -> None:
    """Drop the csgmv shrink launches SGLang cached for an earlier shape's rank.

    On CUDA, `_chunked_lora_shrink_kernel` is a CachedKernel whose key is (K, NUM_SLICES,
    BLOCK_M): llama3_8b qkv prefill at rank 64 caches a kernel compiled for N = 3 * 64 = 192,
    and the rank-8 shape (N = 24) with the same key then reuses it: weights read at stride
    192 * K per adapter, output written at row stride 192 into a (T, 24) buffer (NaN, then an
    illegal address). A server never sees two ranks, so SGLang's key is enough there. The
    next launch goes through Triton's own cache, keyed by every constexpr: no recompile.
    Elsewhere (CPU, the dry run) the kernel is Triton's own function and nothing is cached.
    """
    forget = getattr(shrink_module._chunked_lora_shrink_kernel, "_clear_cache", None)
    if forget is not None:
        forget()


INT32_MAX = 2**31 - 1


def _moe_int32_overflow(x, a_list, b_list, T: int, k: int, E: int, r: int, W: int) -> str | None:
    """The first int32 product of SGLang's _fused_moe_lora_kernel that these tensors overflow.

    The kernel forms each offset as a product of int32 values (fused_moe_lora_kernel.py:134-136,
    152-162, 200), e.g. lora_id * stride_bl. DeepSeek-V3 experts gate_up at rank 16 with 64
    adapters: A is [64, 256, 32, 7168] and each slice view has stride(0) = 256 * 32 * 7168 =
    58,720,256, so adapter 37 and above wrap past 2**31 (wrong rows, or an illegal address).
    """
    n, S = a_list[0].shape[0], len(a_list)
    reach = {
        "lora_id * A.stride(0)": (n - 1) * a_list[0].stride(0),
        "lora_id * B.stride(0)": (n - 1) * b_list[0].stride(0),
        "expert_id * A.stride(1)": (E - 1) * a_list[0].stride(1),
        "expert_id * B.stride(1)": (E - 1) * b_list[0].stride(1),
        "token * x.stride(0)": (x.shape[0] - 1) * x.stride(0),
        "slice or token offset into the rank-wide intermediate": max(S - 1, 1) * T * k * r,
        "slice or token offset into the W-wide intermediate": max(S - 1, 1) * T * k * W,
    }
    for term, value in reach.items():
        if value > INT32_MAX:
            return f"{term} reaches {value:,} > 2**31 - 1"
    return None


def _chunk_size(tokens: int) -> int:
    """ChunkedSgmvLoRABackend._determine_chunk_size_for_tokens (max_lora_chunk_size >= 128)."""
    return 128 if tokens >= 256 else (32 if tokens >= 64 else 16)


def dense(d: dict):
    try:
        from sglang.kernels.ops.lora.dense import chunked_sgmv_shrink, lora_tuning_config
        from sglang.kernels.ops.lora.dense.chunked_sgmv_expand import chunked_sgmv_lora_expand_forward
        from sglang.kernels.ops.lora.dense.chunked_sgmv_shrink import chunked_sgmv_lora_shrink_forward
        from sglang.kernels.ops.lora.dense.gate_up_lora_b import gate_up_lora_b_fwd
        from sglang.kernels.ops.lora.dense.qkv_lora_b import qkv_lora_b_fwd
        from sglang.kernels.ops.lora.dense.sgemm_lora_a import sgemm_lora_a_fwd
        from sglang.kernels.ops.lora.dense.sgemm_lora_b import sgemm_lora_b_fwd
        from sglang.srt.lora.utils import LoRABatchInfo
    except Exception as e:  # noqa: BLE001 - the rows say why
        return {}, f"sglang dense kernels not importable: {type(e).__name__}: {e}"[:300]
    if d["x"].device.type == "cpu":  # dry run: its tuning lookup calls get_device_name(), None on CPU
        lora_tuning_config.get_device_name = lambda *a, **k: "cpu"
    _forget_csgmv_shrink_launches(chunked_sgmv_shrink)
    x, a, b, out, offs = d["x"], d["a"], d["b"], d["out"], d["offs"]
    dev, T, S, n = x.device, d["T"], d["S"], d["n_slots"]
    slots = d["token_slots"]                                  # host int64 [T]
    ranks = torch.full((n,), d["rank"], dtype=torch.int32, device=dev)
    scalings = torch.full((n,), d["scaling"], dtype=torch.float32, device=dev)
    perm = torch.argsort(slots, stable=True)
    counts = torch.bincount(slots, minlength=n).tolist()
    i32 = dict(dtype=torch.int32, device=dev)

    chunk = _chunk_size(T)
    lens, seg_slots = [], []
    for s, c in enumerate(counts):
        for lo in range(0, c, chunk):
            lens.append(min(chunk, c - lo))
            seg_slots.append(s)
    cs = LoRABatchInfo(
        use_cuda_graph=False, bs=d["requests"], num_segments=len(lens), max_len=chunk,
        seg_indptr=torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), **i32),
        weight_indices=torch.tensor(seg_slots, **i32), lora_ranks=ranks, scalings=scalings,
        seg_lens=None, permutation=perm.to(**i32))

    if d["mode"] == "prefill":  # one segment per request, requests one after another
        req_lens = [T // d["requests"]] * d["requests"]
        tr = LoRABatchInfo(
            use_cuda_graph=False, bs=len(req_lens), num_segments=len(req_lens), max_len=max(req_lens),
            seg_lens=torch.tensor(req_lens, **i32),
            seg_indptr=torch.tensor([0] + torch.tensor(req_lens).cumsum(0).tolist(), **i32),
            weight_indices=torch.tensor(d["request_slots"], **i32), lora_ranks=ranks,
            scalings=scalings, permutation=None)
    else:  # TritonLoRABackend._build_sgemm_routing
        tr = LoRABatchInfo(
            use_cuda_graph=False, bs=n, num_segments=n, max_len=T,
            seg_lens=torch.tensor(counts, **i32),
            seg_indptr=torch.tensor([0] + torch.tensor(counts).cumsum(0).tolist(), **i32),
            weight_indices=torch.arange(n, **i32), lora_ranks=ranks, scalings=scalings,
            permutation=perm.to(**i32))

    offsets, offsets_cpu = d["offsets"], torch.tensor(offs, dtype=torch.int32)
    widest = max(hi - lo for lo, hi in zip(offs, offs[1:]))

    def csgmv():
        y = chunked_sgmv_lora_shrink_forward(x=x, weights=a, batch_info=cs, num_slices=S)
        chunked_sgmv_lora_expand_forward(x=y, weights=b, batch_info=cs, slice_offsets=offsets,
                                         max_slice_size=widest, base_output=out,
                                         slice_offsets_cpu=offsets_cpu)

    if S == 1:
        def expand(y):
            sgemm_lora_b_fwd(y, b, tr, out)
    elif S == 2 and offs[1] == offs[2] - offs[1]:      # gate_up
        def expand(y):
            gate_up_lora_b_fwd(y, b, tr, offs[1], out)
    else:                                             # qkv, MLA q_a + kv_a (run_qkv_lora)
        def expand(y):
            qkv_lora_b_fwd(y, b, tr, offsets, widest, out, n_slices=S)

    def triton_backend():
        expand(sgemm_lora_a_fwd(x, a, tr, stack_num=S))

    return {"sglang_csgmv": csgmv, "sglang_triton": triton_backend}, None


def experts(d: dict):
    try:
        from sglang.kernels.ops.lora.moe.fused_moe_lora_kernel import _fused_moe_lora, fused_moe_lora
        from sglang.srt.utils import next_power_of_2

        _get_moe_lora_block_config, _naive_moe_lora_align_block_size = _from_source(
            "sglang.srt.lora.lora_moe_runners",
            ("_get_moe_lora_block_config", "_naive_moe_lora_align_block_size"),
            next_power_of_2=next_power_of_2)
    except Exception as e:  # noqa: BLE001
        return {}, f"sglang MoE LoRA kernel not importable: {type(e).__name__}: {e}"[:300]
    x, a, b, out, r, S, W = d["x"], d["a"], d["b"], d["out"], d["rank"], d["S"], d["W"]
    dev, E, n = x.device, d["E"], d["n_slots"]
    topk_ids, topk_weights = d["topk_ids"], d["topk_weights"]
    a_list = [a[:, :, i * r:(i + 1) * r, :] for i in range(S)]  # as _add_lora_gate_up_delta slices
    b_list = [b[:, :, i * W:(i + 1) * W, :] for i in range(S)]
    overflow = _moe_int32_overflow(x, a_list, b_list, d["T"], topk_ids.shape[1], E, r, W)
    if overflow:
        return {}, ("left out: SGLang's fused_moe_lora computes offsets in int32 and reads out "
                    f"of bounds here ({overflow}); bench/gpu/repro/fused_moe_lora_int32.py")
    bm = 64  # _compute_lora_alignment's BLOCK_SIZE_M
    padded = -(-(topk_ids.numel() + E * (bm - 1)) // bm) * bm
    req_lens = [d["T"] // d["requests"]] * d["requests"]
    seg_indptr = torch.tensor([0] + torch.tensor(req_lens).cumsum(0).tolist(), dtype=torch.int32)
    enabled = torch.ones(n, dtype=torch.int32, device=dev)
    sorted_ids, expert_ids, n_post = _naive_moe_lora_align_block_size(
        topk_ids, seg_indptr, torch.tensor(d["request_slots"], dtype=torch.int32), E, bm, n,
        padded, padded // bm, enabled, dev)
    sorted_ids, expert_ids = sorted_ids.view(n, -1), expert_ids.view(n, -1)
    lora_ids = torch.arange(n, dtype=torch.int32, device=dev)
    blk = _get_moe_lora_block_config(r)
    # serving calls the custom op torch.ops.sglang.fused_moe_lora, registered for CUDA only;
    # the dry run (CPU) calls the function it wraps
    op = fused_moe_lora if dev.type == "cuda" else _fused_moe_lora

    def fused():
        op(
            output=out, qcurr_hidden_states=x, lora_a_stacked=a_list, lora_b_stacked=b_list,
            topk_weights=topk_weights, sorted_token_ids=sorted_ids, expert_ids=expert_ids,
            num_tokens_post_padded=n_post, max_lora_rank=r, top_k_num=topk_ids.shape[1],
            lora_ids=lora_ids, adapter_enabled=enabled,
            shrink_block_size_m=64, shrink_block_size_n=blk["shrink_block_size_n"],
            shrink_block_size_k=64, shrink_group_size_m=8, shrink_num_warps=4,
            shrink_num_stages=2, shrink_split_k=1,
            expand_block_size_m=64, expand_block_size_n=64,
            expand_block_size_k=blk["expand_block_size_k"], expand_group_size_m=8,
            expand_num_warps=4, expand_num_stages=2, expand_split_k=1,
            mul_routed_weight=d["mul_routed_weight"])

    return {"sglang_fused_moe_lora": fused}, None
