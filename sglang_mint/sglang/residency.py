"""The scheduler's side of residency: SGLang's hooks and its LoRA manager (docs/architecture.md, steps 4-9).

The state machine (holds, reads, installs, admission, failures) is the core's
residency/scheduler_residency.py. Here SGLang's scheduler calls it, and
``LoraManagerAdapters`` carries out what it decides in SGLang's LoRA manager;
SGLang keeps its own policy for the GPU slots.
"""

from __future__ import annotations

import logging
import os
import threading
from contextvars import ContextVar

from sglang_mint.config import MintConfig
from sglang_mint.lora_id import is_catalog_lora_id, lora_name_of, parse_lora_id
from sglang_mint.process import before_sigterm
from sglang_mint.residency.host_bytes import node_status
from sglang_mint.residency.request_holds import admit, on_arrival, release_hold
from sglang_mint.residency.scheduler_residency import SchedulerResidency
from sglang_mint.sglang.adapter_reader import attach_adapter, read_adapter
from sglang_mint.sglang.client_rids import is_server_rid
from sglang_mint.usage.ledger import UsageLedger, engine_name

logger = logging.getLogger("sglang_mint")

# The scheduler taking a request in (Scheduler.handle_generate_request), while it does
_ARRIVING_AT: ContextVar[object | None] = ContextVar("sglang_mint.arriving_at", default=None)


class LoraManagerAdapters:
    """SGLang's ``LoRAManager`` as residency's EngineAdapters (scheduler_residency.py)."""

    def __init__(self, manager, catalog):
        self.manager = manager
        self.catalog = catalog

    def read(self, lora_id: str, rev):
        return read_adapter(self.manager, self.catalog, lora_id, rev)

    def attach(self, lora_id: str, share, seq: int):
        return attach_adapter(self.manager, share, lora_id, seq)

    def install(self, lora_id: str, adapter) -> None:
        from sglang.srt.lora.lora_registry import LoRARef

        mgr = self.manager
        mgr.configs[lora_id] = adapter.config
        mgr.loras[lora_id] = adapter
        mgr.lora_refs[lora_id] = LoRARef(lora_id=lora_id, lora_name=lora_name_of(lora_id),
                                         lora_path=adapter.config.path, pinned=False)

    def unload(self, lora_id: str) -> None:
        """SGLang's unload without the free GPU memory it logs before and after: each read empties CUDA's
        caching allocator (get_available_gpu_memory's torch.cuda.empty_cache, which waits for the device,
        and the freed blocks are allocated again), and an eviction comes with every cold load once the
        host budget is full."""
        ref = self.manager.lora_refs.get(lora_id)
        if ref is not None:
            result = self.manager._unload_lora_adapter(ref)
            if not result.success:
                logger.warning("unloading %s failed: %s", ref.lora_name, result.error_message)

    def is_resident(self, lora_id: str) -> bool:
        return lora_id in self.manager.loras


def scheduler_residency(scheduler, config: MintConfig) -> SchedulerResidency:
    """Residency for ``scheduler``: its LoRA manager, its tensor-parallel group, its metrics."""
    from sglang.srt.runtime_context import get_parallel

    from sglang_mint.residency.node_share import NodeShare, group_dir
    from sglang_mint.residency.rank_agreement import TensorParallelAgreement
    from sglang_mint.residency.metrics import SchedulerMetrics
    from sglang_mint.sglang.flags import metrics_enabled

    manager = scheduler.tp_worker.model_runner.lora_manager
    catalog = config.open_catalog()
    tp = scheduler.tp_group  # this DP replica's tensor-parallel ranks
    agreement = share = None
    if tp.world_size > 1:
        agreement = TensorParallelAgreement(tp.cpu_group, tp.world_size)
        share = NodeShare(group_dir(scheduler.server_args.port, get_parallel().dp_rank or 0), tp.rank_in_group)
    residency = SchedulerResidency(
        LoraManagerAdapters(manager, catalog), catalog, budget_bytes=config.host_cache_bytes, pinned=config.pinned,
        load_workers=config.load_workers, agreement=agreement,
        # rank 0's only: SGLang's collector sums every process's counters and live gauges, and the
        # ranks of one engine count the same requests and hold the same adapters
        metrics=SchedulerMetrics(metrics_enabled() and tp.rank_in_group == 0),
        share=share, tp_rank=tp.rank_in_group)
    if metrics_enabled() and tp.rank_in_group == 0:
        # vLLM's LoRA gauges for llm-d (lora_info.py): one writer per DP rank
        from sglang_mint.residency.lora_requests_info import LoraInfoWriter, state_path

        path = state_path(os.environ["PROMETHEUS_MULTIPROC_DIR"], get_parallel().dp_rank or 0)
        scheduler._mint_lora_info = LoraInfoWriter(path, scheduler.max_loras_per_batch, manager, residency,
                                                   model_name=scheduler.server_args.served_model_name)
        manager.memory_pool._mint_metrics = residency.metrics  # packed_pool.py times slot fills into it
    return residency


# -- hooks ---------------------------------------------------------------------
def residency_of(scheduler) -> SchedulerResidency | None:
    return getattr(scheduler, "_mint_residency", None)


def _after_scheduler_init(result, scheduler, *args, **kwargs):
    from sglang_mint.sglang.flags import mint_config

    config = mint_config(scheduler.server_args)
    if config is None:
        return result
    from sglang.srt.runtime_context import get_parallel

    from sglang_mint.sglang.hooks import verify_startup
    from sglang_mint.sglang.mint_moe import moe_layer_of

    manager = scheduler.tp_worker.model_runner.lora_manager if scheduler.enable_lora else None
    verify_startup("scheduler", lora_manager=manager, memory_pool=getattr(manager, "memory_pool", None),
                   moe_layer=moe_layer_of(manager), parallel=get_parallel(), scheduler=scheduler)
    # The scheduler is a spawned process: this line shows the settings reached it.
    logger.info("sglang-mint enabled in scheduler process %d: %s", os.getpid(), config)
    if config.catalog is not None and scheduler.enable_lora:
        scheduler._mint_residency = scheduler_residency(scheduler, config)
    # One ledger per rank SGLang takes requests on and answers from (its own test, in Scheduler.recv_requests):
    # every rank of a tensor- or pipeline-parallel engine runs each request, each pipeline stage's first rank
    # is rank 0 of its own tp_group, and with --enable-dp-attention each attention group's first rank takes
    # its own requests, though all share one tp_group. Under prefill-decode disaggregation the decode
    # server answers, and the prefill server also ends each request it hands over: only the decode side bills.
    parallel = get_parallel()
    if (config.usage_dir is not None and parallel.pp_rank == 0 and parallel.attn_tp_rank == 0
            and parallel.attn_cp_rank == 0 and scheduler.disaggregation_mode.value != "prefill"):
        rank = (parallel.dp_rank or 0) * parallel.attn_dp_size + parallel.attn_dp_rank  # dp_rank without DP attention
        engine = engine_name(scheduler.server_args.host, scheduler.server_args.port, rank)
        ledger = scheduler._mint_usage = UsageLedger(config.usage_dir, engine, flush_s=config.usage_flush_s)
        if threading.current_thread() is threading.main_thread():  # SGLang builds it there
            before_sigterm(ledger.flush_at_signal)  # SIGTERM to the whole server: the last answers are billed
    return result


def _around_run_event_loop(original, scheduler, *args, **kwargs):
    """The scheduler's loop ends: SGLang's graceful stop (SIGTERM to the launcher: drain, then a
    ShutdownReq, and the loop's last pass), or an exception, after which SGLang's launcher kills
    every process. Either way the usage ledger appends what is left first."""
    try:
        return original(scheduler, *args, **kwargs)
    finally:
        ledger = getattr(scheduler, "_mint_usage", None)
        if ledger is not None:
            try:
                ledger.close()
            except OSError as exc:  # a full disk: the stop goes on, and an exception stays the one raised
                logger.warning("usage ledger: the last counts were not appended: %s", exc)


def _around_can_schedule_lora_req(original, scheduler, req, running_loras):
    residency = residency_of(scheduler)
    if residency is not None and is_catalog_lora_id(req.lora_id):
        decision = admit(residency, req)
        if decision is False:
            return False
        # True: its read failed and it now runs as a base-model prefill (lora_id None), which
        # needs a place in the batch's adapter set like any other: the engine decides.
    return original(scheduler, req, running_loras)


def _after_ingest_requests(result, scheduler, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        residency.install_ready()
        lora_info = getattr(scheduler, "_mint_lora_info", None)
        if lora_info is not None:
            lora_info.refresh()
        batch = scheduler.running_batch
        if residency.reading and (batch is None or batch.is_empty()):  # nothing running
            residency.yield_to_reads()
    return result


def _before_add_request_to_queue(scheduler, req, is_retracted=False, *args, **kwargs):
    # Before: SGLang may abort the request inside (queue full, priority), and the abort
    # releases what this took.
    residency = residency_of(scheduler)
    if residency is not None and not is_retracted and is_catalog_lora_id(req.lora_id):
        on_arrival(residency, req)
    if not is_retracted:
        _bill_to(scheduler, req)
    return None


def _bill_to(scheduler, req) -> None:
    """Bill ``req`` to its adapter in ``scheduler``'s ledger, unless it is the server's own request."""
    ledger = getattr(scheduler, "_mint_usage", None)
    if ledger is not None and not is_server_rid(req.rid):  # no tenant's: not billed
        req._mint_usage = (ledger, *_served_adapter(scheduler, req.lora_id))


def _around_handle_generate_request(original, scheduler, recv_req, *args, **kwargs):
    """Scheduler.handle_generate_request AROUND: a request it refuses before queueing it (a sampling mask
    without a top_k it can mask, a beam, disaggregated or dLLM request it cannot serve) is answered from inside
    it, and is billed there (``_bill_refusal``): the ledger never saw one."""
    token = _ARRIVING_AT.set(scheduler)
    try:
        return original(scheduler, recv_req, *args, **kwargs)
    finally:
        _ARRIVING_AT.reset(token)


def _bill_refusal(scheduler, req) -> None:
    """A request that ended before it was queued: one request, an error, and no tokens (nothing ran)."""
    if not hasattr(req, "_mint_usage"):  # never billed (None: billed already)
        _bill_to(scheduler, req)
        req._mint_unserved = True


def _served_adapter(scheduler, lora_id) -> tuple[str | None, int | None]:
    """(adapter id, catalog revision) of a request: (None, None) for the base model, no revision
    for an adapter SGLang loaded itself (--lora-paths, /load_lora_adapter)."""
    if not lora_id or is_catalog_lora_id(lora_id):
        return parse_lora_id(lora_id) if lora_id else (None, None)
    ref = scheduler.tp_worker.model_runner.lora_manager.lora_refs.get(lora_id)
    return (lora_id if ref is None else ref.lora_name), None


# SGLang's message for a request an AbortReq ended (a hang-up, /abort_request) in its grammar queue
# and its disaggregation queues, which file it under status 400 (set_finish_with_abort's default)
ABORT_REQ_MESSAGE = "Aborted by AbortReq."


def usage_outcome(reason: dict | None) -> tuple[bool, bool]:
    """(error, cancelled) of a request that ended for ``reason`` (a finish reason's JSON; None: an
    abort SGLang reported without one). An abort with a status (a refusal, an overload, a timeout)
    is an error; one without, or one an AbortReq made, a cancellation: its client hung up or
    ``/abort_request`` ended it."""
    reason = reason or {"type": "abort"}
    if reason.get("type") != "abort":
        return False, False
    if reason.get("status_code") is None or reason.get("message") == ABORT_REQ_MESSAGE:
        return False, True
    return True, False


def _count_usage(req, abort_reason: dict | None = None) -> None:
    """A request ended: count it once in its scheduler's ledger, with the counts its answer has.
    ``abort_reason``: the reason SGLang sent with an abort it reported outside the output stream
    (queue full, preempted). A request SGLang ended with ``set_finish_with_abort`` (a refusal
    before its prefill) bills no tokens: its prompt was swapped for one token, run and dropped; nor
    does one ended in the queue before its first prefill (_after_send_abort_output).

    A prompt asked for n > 1 choices is served by SGLang as a warm-up (the prompt run for no new token,
    which caches it) and then one request per choice, each with the whole prompt, all but its last
    token cached by the warm-up. Counted whole, n = 3 was 4 requests, 4 prompts and 3 of them cached.
    The warm-up counts the prompt once and what it found cached, and no request; each choice counts
    one request and its completion. A warm-up that fails is counted as a request (SGLang then sends the
    choices only for a streamed request, or an abort without a status: they count too).
    A client that asks n > 1 choices of 0 new tokens is counted as n + 1 warm-ups: no request."""
    usage = getattr(req, "_mint_usage", None)
    if usage is not None:
        req._mint_usage = None
        error, cancelled = usage_outcome(abort_reason or (req.finished_reason.to_json()
                                                          if req.finished_reason is not None else None))
        served = not getattr(req, "_mint_unserved", False)
        prompt, cached, completion = ((len(req.origin_input_ids), req.cached_tokens, len(req.output_ids_through_stop))
                                      if served else (0, 0, 0))
        requests = 1
        if getattr(req, "_mint_warm_up", False):  # SGLang's warm-up of a prompt asked for n > 1 choices
            requests = 0 if not (error or cancelled) else 1  # the choices follow it, seldom one that failed
        elif req.sampling_params.n > 1:  # a choice: its prompt is the warm-up's (cached by it)
            prompt = cached = 0
        usage[0].record(usage[1], usage[2], prompt_tokens=prompt, cached_tokens=cached, completion_tokens=completion,
                        error=error, cancelled=cancelled, requests=requests)


def _before_init_req_max_new_tokens(scheduler, req, *args, **kwargs):
    """Scheduler.init_req_max_new_tokens BEFORE: whether ``req`` is SGLang's warm-up of a prompt asked for
    n > 1 choices (0 new tokens), read before the scheduler cuts max_new_tokens to what the context and
    the KV memory leave: a choice of a long prompt cut to 0 is still a choice."""
    if getattr(scheduler, "_mint_usage", None) is not None:
        req._mint_warm_up = req.sampling_params.n > 1 and req.sampling_params.max_new_tokens == 0


def _after_set_finish_with_abort(result, req, *args, **kwargs):
    """Req.set_finish_with_abort AFTER: the request's prompt is now one placeholder token."""
    req._mint_unserved = True
    return result


def _after_send_abort_output(result, scheduler, abort_req, req, *args, **kwargs):
    if req.already_computed == 0 and req.retraction_count == 0:
        # Ended in the queue before its first prefill (the queue full, a priority refused, a hang-up
        # while it waited): nothing was computed. A chunked prefill's abort has computed a chunk; a
        # retracted request ran before (SGLang zeroes already_computed at a retraction).
        req._mint_unserved = True
    _bill_refusal(scheduler, req)  # a dLLM request SGLang refused on arrival
    _count_usage(req, abort_req.finished_reason)
    residency = residency_of(scheduler)
    if residency is not None:
        release_hold(req)
        residency.on_end()
    return result


def _before_stream_output(streamer, reqs, *args, **kwargs):
    """SchedulerOutputStreamer.stream_output BEFORE: a finished request is counted before its answer leaves,
    so a client that stops the server once answered finds it billed (counted after, the scheduler could be
    stopped between the two)."""
    arriving_at = _ARRIVING_AT.get()
    for req in reqs:
        if req.finished():
            if arriving_at is not None:
                _bill_refusal(arriving_at, req)
            _count_usage(req)


def _after_stream_output(result, streamer, reqs, *args, **kwargs):
    for req in reqs:
        if req.finished() and getattr(req, "_mint_hold", None) is not None:
            release_hold(req)  # drained on the loop at the next install_ready
    return result


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        result.internal_state["mint"] = node_status(residency)
    if scheduler.enable_lora:
        from sglang_mint.sglang.mint_backend import MintLoRABackend

        backend = scheduler.tp_worker.model_runner.lora_manager.lora_backend
        if isinstance(backend, MintLoRABackend):
            result.internal_state["mint_backend"] = {"moe_kernel_calls": backend.moe_kernel_calls}
    return result
