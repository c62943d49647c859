"""Catalog adapters in the scheduler: loaded in the background, installed in O(1).

A request for catalog adapter ``acme/bot`` at revision 3 reaches the scheduler
with ``lora_id = "mint:acme/bot@3"`` (the tokenizer manager registers that id
without asking the scheduler to load anything). When the request enters the
scheduler's queue (``Scheduler._add_request_to_queue``) an id the LoRA manager
does not hold starts a background read (``ColdLoader``); at admission
(``Scheduler.can_schedule_lora_req``) the request waits until the read is
installed, and SGLang skips it (``continue``) and admits the requests behind it. Each loop iteration hands finished reads to the LoRA manager: three
dict assignments, what SGLang's own ``_load_lora_adapter`` does after its disk
read. A failed read fails only that adapter's requests, with its reason.
Host memory is bounded by ``HostLRU``; SGLang keeps its own policy for the
GPU slots.
"""

from __future__ import annotations

import logging
import sys
import time
from collections import OrderedDict

from sglang_mint.catalog import open_catalog
from sglang_mint.config import MintConfig
from sglang_mint.residency import ColdLoader, HostLRU, LoadResult

logger = logging.getLogger("sglang_mint")

MINT_ID_PREFIX = "mint:"
# The scheduler loop spins while requests wait and holds the GIL; a worker thread that gives the
# GIL up (a file read, a tensor op) waits up to the switch interval to get it back. At Python's
# default 5 ms a tiny adapter's read took ~60 ms of wall time; idle workers ask for nothing, so
# a short interval costs nothing while no load runs.
GIL_SWITCH_INTERVAL_S = 0.0005
FAILURE_MEMORY_S = 10.0  # a failed revision is retried by requests arriving after this
MAX_FAILURES_KEPT = 10_000


def mint_lora_id(adapter_id: str, revision: int) -> str:
    return f"{MINT_ID_PREFIX}{adapter_id}@{revision}"


def parse_mint_lora_id(lora_id: str) -> tuple[str, int]:
    """``"mint:acme/bot@3"`` -> ``("acme/bot", 3)`` (ids never contain '@')."""
    adapter_id, revision = lora_id[len(MINT_ID_PREFIX):].rsplit("@", 1)
    return adapter_id, int(revision)


def is_mint_lora_id(lora_id) -> bool:
    return isinstance(lora_id, str) and lora_id.startswith(MINT_ID_PREFIX)


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)


def adapter_nbytes(adapter) -> int:
    tensors = [t for layer in adapter.layers for t in layer.weights.values()]
    tensors += list(adapter.embedding_layers.values()) + list(adapter.added_tokens_embeddings.values())
    return sum(t.numel() * t.element_size() for t in tensors)


class SchedulerResidency:
    """The catalog adapters one scheduler process holds in host memory."""

    def __init__(self, scheduler, config: MintConfig):
        self.scheduler = scheduler
        self.manager = scheduler.tp_worker.model_runner.lora_manager
        self.catalog = open_catalog(config.catalog)
        self.lru = HostLRU(config.host_cache_bytes, pinned=config.pinned,
                           group_of=lambda lora_id: parse_mint_lora_id(lora_id)[0])
        self.loader = ColdLoader(self._read, workers=config.load_workers)
        self.failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self.installed_total = 0
        self.requests = 0  # catalog-adapter requests that reached this scheduler
        self.misses = 0  # of which found their adapter out of host memory
        self.load_seconds: list[float] = []  # recent cold-read durations, for /mint/status
        from sglang_mint.sglang.metrics import SchedulerMetrics, metrics_enabled

        self.metrics = SchedulerMetrics(metrics_enabled())

    # -- on a worker thread ------------------------------------------------
    def _read(self, lora_id: str):
        import os

        from safetensors.torch import load_file
        from sglang.srt.lora.lora import LoRAAdapter
        from sglang.srt.lora.lora_config import LoRAConfig
        from sglang.srt.lora.lora_registry import LoRARef

        from sglang_mint.sglang.packed_loader import packed_path

        adapter_id, revision = parse_mint_lora_id(lora_id)
        rev = self.catalog.get_revision(adapter_id, revision)
        path = str(rev.local_path())
        ref = LoRARef(lora_id=lora_id, lora_name=f"{adapter_id}@{revision}", lora_path=path, pinned=False)
        mgr = self.manager
        config = LoRAConfig(path, base_vocab_size=mgr.base_hf_config.vocab_size)
        if config.lora_added_tokens_size > 0:
            raise ValueError("adapters that add tokens to the vocabulary are not supported")
        if config.use_dora:
            raise ValueError("DoRA adapters are not supported")
        if not mgr.memory_pool.can_support(config):
            raise ValueError(
                f"rank {config.r} or target modules {sorted(config.target_modules)} do not fit the server's "
                "LoRA pool (--max-lora-rank, --lora-target-modules)"
            )
        adapter = LoRAAdapter(lora_id, config, mgr.base_hf_config, mgr.load_config, mgr.lora_backend,
                              base_model=mgr.base_model)
        if packed_path(path) is not None:
            adapter.initialize_weights()  # the packed reader (packed_loader.py): one read, one copy
        else:
            # One C-level read that releases the GIL. SGLang's initialize_weights goes through
            # its model-weight iterator, which starts a thread pool per file: each handoff
            # then waits out the busy scheduler loop's GIL slice (tens of ms per tiny adapter).
            adapter.initialize_weights_from_tensors(load_file(os.path.join(path, "adapter_model.safetensors")))
        return ref, config, adapter, adapter_nbytes(adapter)

    # -- on the scheduler loop ---------------------------------------------
    def install_ready(self) -> None:
        """Hand finished reads to the LoRA manager (O(1) each), then evict beyond the budget."""
        results = self.loader.ready()
        if not results:
            return
        for result in results:
            if result.ok:
                self._install(result)
            else:
                self._remember_failure(result)
        self._evict()
        self.metrics.host_bytes.set(self.lru.bytes)
        self.metrics.resident.set(len(self.lru))

    def _install(self, result: LoadResult) -> None:
        ref, config, adapter, nbytes = result.value
        mgr = self.manager
        if ref.lora_id in mgr.loras:  # installed meanwhile (cannot happen with one loader; cheap to guard)
            return
        mgr.configs[ref.lora_id] = config
        mgr.loras[ref.lora_id] = adapter
        mgr.lora_refs[ref.lora_id] = ref
        self.lru.loaded(ref.lora_id, nbytes)
        self.installed_total += 1
        self.load_seconds.append(result.load_seconds)
        del self.load_seconds[:-1024]
        self.metrics.cold_loads.inc()
        self.metrics.cold_load_seconds.observe(result.load_seconds)

    def _remember_failure(self, result: LoadResult) -> None:
        adapter_id, revision = parse_mint_lora_id(result.key)
        reason = f"{type(result.error).__name__}: {result.error}"
        message = f"adapter {adapter_id!r} (revision {revision}) could not be loaded: {reason}"
        logger.error(message)
        self.failures[result.key] = (time.monotonic(), message)
        self.metrics.failed_loads.inc()
        while len(self.failures) > MAX_FAILURES_KEPT:
            self.failures.popitem(last=False)

    def _in_use(self) -> set:
        s = self.scheduler
        ids = {req.lora_id for req in s.waiting_queue}
        if s.running_batch is not None:
            ids.update(req.lora_id for req in s.running_batch.reqs)
        return ids

    def _evict(self) -> None:
        victims = self.lru.evictions(self._in_use())
        for lora_id in victims:
            ref = self.manager.lora_refs.get(lora_id)
            if ref is not None:
                self.manager.unload_lora_adapter(ref)
            self.lru.evicted(lora_id)
            self.metrics.evictions.inc()

    def on_arrival(self, req) -> None:
        """A request reached the scheduler: start its adapter's read now, not at its admission turn."""
        lora_id = req.lora_id
        self.requests += 1
        self.metrics.requests.inc()
        if lora_id in self.manager.loras:
            self.lru.touched(lora_id)
            self.metrics.hits.inc()
            return
        self.misses += 1
        req._mint_waiting_since = time.monotonic()
        self.metrics.misses.inc()
        if lora_id not in self.failures:
            self.loader.request(lora_id)

    def admit(self, req) -> bool | None:
        """Admission for a catalog adapter's request: None = ask SGLang, False = wait."""
        lora_id = req.lora_id
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
            if time.monotonic() - failed_at < FAILURE_MEMORY_S:
                # Finish it with the reason; it runs as a one-token base-model prefill.
                req.set_finish_with_abort(message, status_code=422, err_type="AdapterLoadError")
                req.lora_id = None
                return True
            del self.failures[lora_id]
        self.loader.request(lora_id)  # evicted while it waited, or a failure expired
        return False

    def status(self) -> dict:
        return {
            "requests": self.requests,
            "hit_rate": None if not self.requests else round(1 - self.misses / self.requests, 4),
            "resident": len(self.lru),
            "host_bytes": self.lru.bytes,
            "host_budget_bytes": self.lru.budget_bytes,
            "loading": self.loader.inflight,
            "cold_loads": self.installed_total,
            "cold_load_p50_s": _percentile(self.load_seconds, 0.50),
            "cold_load_p99_s": _percentile(self.load_seconds, 0.99),
            "failed_loads": self.loader.failed_total,
            "evictions": self.lru.evictions_total,
        }


# -- hooks ---------------------------------------------------------------------
SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"


def register_hooks() -> None:
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType

    HookRegistry.register(f"{SCHEDULER}.__init__", _after_scheduler_init, HookType.AFTER)
    HookRegistry.register(f"{SCHEDULER}.can_schedule_lora_req", _around_can_schedule_lora_req, HookType.AROUND)
    HookRegistry.register(f"{SCHEDULER}.ingest_requests", _after_ingest_requests, HookType.AFTER)
    HookRegistry.register(f"{SCHEDULER}._add_request_to_queue", _after_add_request_to_queue, HookType.AFTER)
    HookRegistry.register(f"{SCHEDULER}.get_internal_state", _after_get_internal_state, HookType.AFTER)


def residency_of(scheduler) -> SchedulerResidency | None:
    return getattr(scheduler, "_mint_residency", None)


def _after_scheduler_init(result, scheduler, *args, **kwargs):
    import os

    from sglang_mint.sglang.flags import mint_config

    config = mint_config(scheduler.server_args)
    if config is None:
        return result
    # The scheduler is a spawned process: this line shows the settings reached it.
    logger.info("sglang-mint enabled in scheduler process %d: %s", os.getpid(), config)
    if config.catalog is not None and scheduler.enable_lora:
        scheduler._mint_residency = SchedulerResidency(scheduler, config)
    return result


def _around_can_schedule_lora_req(original, scheduler, req, running_loras):
    residency = residency_of(scheduler)
    if residency is not None and is_mint_lora_id(req.lora_id):
        decision = residency.admit(req)
        if decision is not None:
            return decision
    return original(scheduler, req, running_loras)


def _after_ingest_requests(result, scheduler, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        residency.install_ready()
    return result


def _after_add_request_to_queue(result, scheduler, req, is_retracted=False, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None and not is_retracted and is_mint_lora_id(req.lora_id):
        residency.on_arrival(req)
    return result


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    residency = residency_of(scheduler)
    if residency is not None:
        result.internal_state["mint"] = residency.status()
    return result
