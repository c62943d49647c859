"""Catalog adapters in the scheduler: loaded in the background, held while in use.

A request for catalog adapter ``acme/bot`` at revision 3 reaches the scheduler
with ``lora_id = "mint:acme/bot@3"`` (the tokenizer manager registers that id
without asking the scheduler to load anything). Its lifecycle here:

1. It enters the scheduler's queue (``Scheduler._add_request_to_queue``): the
   adapter is *held* (``HostLRU.hold``) until this request ends, and if it is
   not in host memory a read is wanted.
2. Wanted reads start in arrival order as the host budget allows
   (``HostLRU.reserve``): bytes being read count against the budget, idle
   adapters are evicted to make room, and a read that does not fit waits for
   a request to end. Reads run on ``ColdLoader`` threads.
3. At admission (``Scheduler.can_schedule_lora_req``) the request waits until
   its read is installed; SGLang skips it and admits the requests behind it.
   Each loop iteration hands finished reads to the LoRA manager: three dict
   assignments, what SGLang's own ``_load_lora_adapter`` does after its read.
4. It ends when its last output is streamed (``SchedulerOutputStreamer
   .stream_output``) or it is aborted (``Scheduler.send_abort_output``): the
   hold is released, exactly once. A weakref finalizer releases it too if the
   request object is dropped by a path neither hook sees.

A failed read fails only that adapter's requests (HTTP 422, with the reason).
SGLang keeps its own policy for the GPU slots.

With tensor parallelism every rank runs this over the same requests, and the
ranks agree on finished reads, ended holds and the clock before acting on
them (residency/rank_agreement.py), so they admit the same requests in the same
iteration.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import time
import weakref
from collections import OrderedDict

from sglang_mint.config import MintConfig
from sglang_mint.residency import ColdLoader, HostLRU, LoadResult
from sglang_mint.residency.host_bytes import (
    node_status, proportional_set_size, read_estimate_bytes, release_free_memory,
)
from sglang_mint.lora_id import CatalogLoraId, is_catalog_lora_id, parse_lora_id
from sglang_mint.sglang.adapter_reader import attach_adapter, read_adapter
from sglang_mint.residency.rank_agreement import RankView, TensorParallelAgreement

logger = logging.getLogger("sglang_mint")

# The scheduler loop spins while requests wait and holds the GIL; a worker thread that gives the
# GIL up (a file read, a tensor op) waits up to the switch interval to get it back. At Python's
# default 5 ms a tiny adapter's read took ~60 ms of wall time; idle workers ask for nothing, so
# a short interval costs nothing while no load runs.
GIL_SWITCH_INTERVAL_S = 0.0005
READ_YIELD_S = 0.0005  # the loop's pause per iteration while it only waits for reads
FAILURE_MEMORY_S = 10.0  # a failed revision is retried by requests arriving after this
MAX_FAILURES_KEPT = 1024
def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)


def failure_message(result: LoadResult) -> str:
    adapter_id, revision = parse_lora_id(result.key)
    return (f"adapter {adapter_id!r} (revision {revision}) could not be loaded: "
            f"{type(result.error).__name__}: {result.error}")


def release_hold(req) -> None:
    """The request ended: let go of its adapter (a no-op after the first call, or for others)."""
    hold = getattr(req, "_mint_hold", None)
    if hold is not None:
        req._mint_hold = None
        hold()


class SchedulerResidency:
    """The catalog adapters one scheduler process holds in host memory."""

    def __init__(self, scheduler, config: MintConfig):
        self.scheduler = scheduler
        self.manager = scheduler.tp_worker.model_runner.lora_manager
        self.catalog = config.open_catalog()
        self.lru = HostLRU(config.host_cache_bytes, pinned=config.pinned,
                           group_of=lambda lora_id: parse_lora_id(lora_id)[0])
        self.loader = ColdLoader(self._read, workers=config.load_workers)
        self.wanted: OrderedDict[str, None] = OrderedDict()  # reads waiting for room, in arrival order
        self.reading: set[str] = set()  # reads started and not yet installed or failed
        # (rid, lora id) of holds to let go, drained on the loop
        self.released: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        tp = scheduler.tp_group  # this DP replica's tensor-parallel ranks
        self.agreement = TensorParallelAgreement(tp.cpu_group, tp.world_size) if tp.world_size > 1 else None
        self.tp_rank = tp.rank_in_group
        self.finished_here: dict[str, LoadResult] = {}  # finished on this rank, not yet on every rank
        self.ended_here: dict[str, str] = {}  # rid -> lora id: released on this rank, not yet on every rank
        self.now = time.monotonic()  # the clock failures age by: rank 0's under tensor parallelism
        # Under tensor parallelism rank 0 reads each adapter and the others map its copy (residency/node_share.py);
        # reads are numbered in start order, the same on every rank.
        self.share = None
        self.read_seq = 0
        self.seq_of: dict[str, int] = {}
        if self.agreement is not None:
            from sglang.srt.runtime_context import get_parallel

            from sglang_mint.residency.node_share import NodeShare, group_dir

            dp_rank = get_parallel().dp_rank or 0
            self.share = NodeShare(group_dir(scheduler.server_args.port, dp_rank), self.tp_rank)
        self.failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self.installed_total = 0
        self.trim_due = False
        self.requests = 0  # catalog-adapter requests that reached this scheduler
        self.misses = 0  # of which found their adapter out of host memory
        self.load_seconds: list[float] = []  # recent cold-read durations, for /mint/status
        from sglang_mint.sglang.metrics import SchedulerMetrics, metrics_enabled

        self.metrics = SchedulerMetrics(metrics_enabled())
        self.lora_info = None  # vLLM's lora_requests_info gauge for llm-d (lora_info.py): one writer per DP rank
        if metrics_enabled() and self.tp_rank == 0:
            from sglang.srt.runtime_context import get_parallel

            from sglang_mint.sglang.lora_info import LoraInfoWriter, state_path

            path = state_path(os.environ["PROMETHEUS_MULTIPROC_DIR"], get_parallel().dp_rank or 0)
            self.lora_info = LoraInfoWriter(path, scheduler.max_loras_per_batch, self.manager, self)

    # -- on a worker thread ------------------------------------------------
    def _read(self, lora_id: str):
        """Build the adapter ``lora_id`` names; under tensor parallelism rank 0 reads it and the
        other ranks map rank 0's copy (residency/node_share.py)."""
        rev = self._revision(lora_id)
        if self.share is None:
            return read_adapter(self.manager, self.catalog, lora_id, rev)
        seq = self.seq_of[lora_id]
        if self.tp_rank != 0:
            return attach_adapter(self.manager, self.share, lora_id, seq)
        try:
            ref, config, adapter, nbytes = read_adapter(self.manager, self.catalog, lora_id, rev)
            self.share.publish(seq, adapter)
        except Exception as exc:
            self.share.publish_failure(seq, f"{type(exc).__name__}: {exc}")
            raise
        return ref, config, adapter, nbytes

    # -- on the scheduler loop ---------------------------------------------
    def install_ready(self) -> None:
        """Let go of ended requests, hand finished reads to the LoRA manager (O(1) each), start reads."""
        if self.agreement is not None:
            self._install_agreed()
            return
        self.now = time.monotonic()
        self._drain_released()
        for result in self.loader.ready():
            if result.ok:
                self._install(result)
            else:
                self._fail(result.key, failure_message(result))
        self._start_reads()
        self._trim()

    def _install_agreed(self) -> None:
        """install_ready under tensor parallelism: act only on what every rank saw (rank_agreement.py).

        Called once per loop iteration on every rank. Whether to exchange at all depends only on
        agreed state (holds and unsettled reads), so every rank makes the same call."""
        for result in self.loader.ready():
            self.finished_here[result.key] = result
        while True:
            try:
                rid, lora_id = self.released.get_nowait()
            except queue.Empty:
                break
            self.ended_here[rid] = lora_id
        if not (self.lru.held or self.reading):
            return
        mine = RankView({key: None if r.ok else failure_message(r) for key, r in self.finished_here.items()},
                        list(self.ended_here))
        agreed = self.agreement.exchange(mine)
        self.now = agreed.now
        for rid in agreed.ended:
            self.lru.release(self.ended_here.pop(rid))
        for key in agreed.installs:
            self._install(self.finished_here.pop(key))
            self._unshare(key)  # every rank has mapped it: the mappings keep the pages, the names can go
        for key, message in agreed.failures.items():
            del self.finished_here[key]
            self._fail(key, message)
        self._start_reads()
        self._trim()

    def _trim(self) -> None:
        """Give memory freed by reads and evictions back to the system, at most once per iteration:
        without it the allocator kept it and the scheduler grew by about the budget again."""
        if self.trim_due:
            self.trim_due = False
            release_free_memory()

    def _fail(self, lora_id: str, message: str) -> None:
        self._unshare(lora_id)
        self.reading.discard(lora_id)
        self.lru.cancelled(lora_id)
        self._remember_failure(lora_id, message)

    def _install(self, result: LoadResult) -> None:
        ref, config, adapter, nbytes = result.value
        self.reading.discard(result.key)
        mgr = self.manager
        mgr.configs[ref.lora_id] = config
        mgr.loras[ref.lora_id] = adapter
        mgr.lora_refs[ref.lora_id] = ref
        self._evict(self.lru.loaded(ref.lora_id, nbytes))  # the real size, which may exceed the estimate
        self.trim_due = True  # the read's buffers are free now
        self.installed_total += 1
        self.load_seconds.append(result.load_seconds)
        del self.load_seconds[:-1024]
        self.metrics.cold_loads.inc()
        self.metrics.cold_load_seconds.observe(result.load_seconds)
        self._update_gauges()

    def _remember_failure(self, lora_id: str, message: str) -> None:
        logger.error(message)
        self.failures[lora_id] = (self.now, message)
        self.failures.move_to_end(lora_id)
        self.metrics.failed_loads.inc()
        while len(self.failures) > MAX_FAILURES_KEPT:
            self.failures.popitem(last=False)

    def _want(self, lora_id: str) -> None:
        if lora_id not in self.wanted and lora_id not in self.reading:
            self.wanted[lora_id] = None
            self._start_reads()

    def _start_reads(self) -> None:
        """Start wanted reads, oldest first, while the host budget has room for them."""
        while self.wanted:
            lora_id = next(iter(self.wanted))
            victims = self.lru.reserve(lora_id, self._estimate(lora_id))
            if victims is None:
                return  # waits for a request to end
            del self.wanted[lora_id]
            self._evict(victims)
            self.read_seq += 1
            self.seq_of[lora_id] = self.read_seq
            self.reading.add(lora_id)
            self.loader.request(lora_id)
        self._update_gauges()

    def _revision(self, lora_id: str):
        """The catalog's record of the revision ``lora_id`` names: the one the frontend resolved,
        which travels with the request (sglang_mint/lora_id.py); the catalog is asked only for
        a plain id string."""
        if isinstance(lora_id, CatalogLoraId):
            return lora_id.revision
        return self.catalog.get_revision(*parse_lora_id(lora_id))

    def _estimate(self, lora_id: str) -> int:
        try:
            rev = self._revision(lora_id)
        except Exception:  # noqa: BLE001 - the read itself will fail and say why
            return read_estimate_bytes(0)
        return read_estimate_bytes(rev.size_bytes, rev.loaded_bytes, rev.tensor_count)

    def _evict(self, victims: list[str]) -> None:
        for lora_id in victims:
            ref = self.manager.lora_refs.get(lora_id)
            if ref is not None:
                self.manager.unload_lora_adapter(ref)
            self.lru.evicted(lora_id)
            self.metrics.evictions.inc()
        self.trim_due = self.trim_due or bool(victims)

    def _unshare(self, lora_id: str) -> None:
        seq = self.seq_of.pop(lora_id, None)
        if seq is not None and self.share is not None and self.tp_rank == 0:
            self.share.drop(seq)

    def _drain_released(self) -> None:
        released = False
        while True:
            try:
                _, lora_id = self.released.get_nowait()
            except queue.Empty:
                break
            self.lru.release(lora_id)
            released = True
        if released:
            self._start_reads()

    def _update_gauges(self) -> None:
        self.metrics.host_bytes.set(self.lru.bytes)
        self.metrics.resident.set(len(self.lru))

    def on_arrival(self, req) -> None:
        """A request reached the scheduler: hold its adapter until it ends, and want it read."""
        lora_id = req.lora_id
        self.requests += 1
        self.metrics.requests.inc()
        self.lru.hold(lora_id)
        # Called once: by release_hold when the request ends, or by the collector if it never does.
        req._mint_hold = weakref.finalize(req, self.released.put, (req.rid, lora_id))
        req._mint_hold.atexit = False
        if lora_id in self.manager.loras:
            self.lru.touched(lora_id)
            self.metrics.hits.inc()
            return
        self.misses += 1
        req._mint_waiting_since = time.monotonic()
        self.metrics.misses.inc()
        if lora_id not in self.failures:
            self._want(lora_id)

    def on_end(self, req) -> None:
        release_hold(req)
        if self.agreement is None:  # under tensor parallelism the next agreed iteration lets it go
            self._drain_released()

    def admit(self, req) -> bool | None:
        """Admission for a catalog adapter's request: None = ask SGLang, False = wait."""
        lora_id = req.lora_id
        if self.agreement is None:  # under tensor parallelism only the once-per-iteration exchange installs
            self.install_ready()
        if lora_id in self.manager.loras:
            self.lru.touched(lora_id)
            waited_since = getattr(req, "_mint_waiting_since", None)
            if waited_since is not None:
                req._mint_waiting_since = None
                self.metrics.queue_wait_seconds.observe(time.monotonic() - waited_since)
            return None
        failure = self.failures.get(lora_id)
        if failure is not None:
            failed_at, message = failure
            if self.now - failed_at < FAILURE_MEMORY_S:
                # Finish it with the reason; it runs as a one-token base-model prefill.
                req.set_finish_with_abort(message, status_code=422, err_type="AdapterLoadError")
                req.lora_id = None
                return True
            del self.failures[lora_id]
        self._want(lora_id)  # a failure expired: try again
        return False

    def status(self) -> dict:
        return {
            "requests": self.requests,
            "hit_rate": None if not self.requests else round(1 - self.misses / self.requests, 4),
            "resident": len(self.lru),
            "host_bytes": self.lru.bytes,
            "host_reserved_bytes": self.lru.reserved_bytes,
            "host_peak_bytes": self.lru.peak_bytes,
            "host_budget_bytes": self.lru.budget_bytes,
            "adapters_in_use": self.lru.held,
            "reads_waiting_for_room": len(self.wanted),
            "loading": self.loader.inflight,
            "cold_loads": self.installed_total,
            "cold_load_p50_s": _percentile(self.load_seconds, 0.50),
            "cold_load_p99_s": _percentile(self.load_seconds, 0.99),
            "failed_loads": self.loader.failed_total,
            "evictions": self.lru.evictions_total,
            "catalog_queries": self.catalog.lookups,  # 0 while every request carries its record
            "tp_rank": self.tp_rank,
            "pid": os.getpid(),  # which scheduler: /mint/status lists them in no fixed order
            "host": socket.gethostname(),
            "pss_bytes": proportional_set_size(),
        }


# -- hooks ---------------------------------------------------------------------
def residency_of(scheduler) -> SchedulerResidency | None:
    return getattr(scheduler, "_mint_residency", None)


def _after_scheduler_init(result, scheduler, *args, **kwargs):
    import os

    from sglang_mint.sglang.flags import mint_config

    config = mint_config(scheduler.server_args)
    if config is None:
        return result
    from sglang_mint.sglang import hooks

    hooks.verify_applied("scheduler")
    # The scheduler is a spawned process: this line shows the settings reached it.
    logger.info("sglang-mint enabled in scheduler process %d: %s", os.getpid(), config)
    if config.catalog is not None and scheduler.enable_lora:
        scheduler._mint_residency = SchedulerResidency(scheduler, config)
    return result


def _around_can_schedule_lora_req(original, scheduler, req, running_loras):
    residency = residency_of(scheduler)
    if residency is not None and is_catalog_lora_id(req.lora_id):
        decision = residency.admit(req)
        if decision is not None:
            return decision
    return original(scheduler, req, running_loras)


def _after_ingest_requests(result, scheduler, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        residency.install_ready()
        if residency.lora_info is not None:
            residency.lora_info.refresh()
        if residency.reading and residency.agreement is None and _nothing_running(scheduler):
            # The loop would spin holding the GIL while its only work is waiting for reads, and a
            # read thread gets the GIL back only at each switch interval, once per torch call:
            # measured on CPU, a 14 MB adapter took 0.32 s to read beside a spinning loop. A short
            # sleep hands the GIL over. (Under TP the ranks' exchange blocks in gloo, which does too.)
            time.sleep(READ_YIELD_S)
    return result


def _nothing_running(scheduler) -> bool:
    batch = scheduler.running_batch
    return batch is None or batch.is_empty()


def _before_add_request_to_queue(scheduler, req, is_retracted=False, *args, **kwargs):
    # Before: SGLang may abort the request inside (queue full, priority), and the abort
    # releases what this took.
    residency = residency_of(scheduler)
    if residency is not None and not is_retracted and is_catalog_lora_id(req.lora_id):
        residency.on_arrival(req)
    return None


def _after_send_abort_output(result, scheduler, abort_req, req, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        residency.on_end(req)
    return result


def _after_stream_output(result, streamer, reqs, *args, **kwargs):
    for req in reqs:
        if getattr(req, "_mint_hold", None) is not None and req.finished():
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
