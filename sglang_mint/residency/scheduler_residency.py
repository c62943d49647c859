"""Catalog adapters in one scheduler process: read in the background, held while in use.

A request for catalog adapter ``acme/bot`` at revision 3 reaches the scheduler
with the key ``"mint:acme/bot@3"`` (sglang_mint/lora_id.py). Its lifecycle here:

1. ``on_arrival(key)``: the adapter is *held* (``HostLRU.hold``) until the
   request ends, and if it is not resident a read is wanted.
2. Wanted reads start in arrival order as the host budget allows
   (``HostLRU.reserve``): bytes being read count against the budget, idle
   adapters are evicted to make room, and a read that does not fit waits for
   a request to end. Reads run on ``ColdLoader`` threads.
3. ``admit(key)`` at admission: wait until the read is installed, or fail the
   request with the reason if the read failed. ``install_ready()``, once per
   loop iteration, hands finished reads to the engine (O(1) each).
4. ``release(rid, key)`` when the request ends, once per arrival and from
   any thread (a garbage-collection finalizer may be the caller); the hold
   goes on the loop, at ``on_end`` or the next ``install_ready``.

A failed read fails only that adapter's requests, and requests arriving
within ``FAILURE_MEMORY_S`` fail at once with the same reason.

With tensor parallelism every rank runs this over the same requests, and the
ranks agree on finished reads, ended holds and the clock before acting on
them (rank_agreement.py), so they admit the same requests in the same
iteration; rank 0 reads each adapter and the others map its copy (node_share.py).

The engine's side is ``EngineAdapters``; sglang_mint/sglang/residency.py
implements it over SGLang's LoRA manager and calls the methods above from its hooks.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import time
from collections import OrderedDict
from typing import Any, Protocol

from sglang_mint.lora_id import CatalogLoraId, parse_lora_id
from sglang_mint.residency.host_bytes import read_estimate_bytes, release_free_memory
from sglang_mint.residency.host_lru import HostLRU
from sglang_mint.residency.loader import ColdLoader, LoadResult
from sglang_mint.residency.rank_agreement import RankView

logger = logging.getLogger("sglang_mint")

# The scheduler loop spins while requests wait and holds the GIL; a worker thread that gives the
# GIL up (a file read, a tensor op) waits up to the switch interval to get it back. At Python's
# default 5 ms a tiny adapter's read took ~60 ms of wall time; idle workers ask for nothing, so
# a short interval costs nothing while no load runs.
GIL_SWITCH_INTERVAL_S = 0.0005
READ_YIELD_S = 0.0005  # the loop's pause per iteration while it only waits for reads
FAILURE_MEMORY_S = 10.0  # a failed revision is retried by requests arriving after this
MAX_FAILURES_KEPT = 1024


class EngineAdapters(Protocol):
    """The engine's table of loaded adapters, as residency drives it. Keys are catalog LoRA ids."""

    def read(self, key: str, rev) -> tuple[Any, int]:
        """On a ColdLoader thread: build revision ``rev`` (the catalog's record) of ``key``.
        Returns the adapter and the host bytes it holds; raises to fail the read."""

    def attach(self, key: str, share, seq: int) -> tuple[Any, int]:
        """On a ColdLoader thread, tensor-parallel ranks other than 0: the adapter rank 0 read as
        read number ``seq``, mapped from ``share`` (a node_share.NodeShare), and its host bytes."""

    def install(self, key: str, adapter) -> None:
        """On the loop: make a read's adapter servable. O(1)."""

    def unload(self, key: str) -> None:
        """On the loop: drop an evicted adapter (nothing to do if it was never installed)."""

    def is_resident(self, key: str) -> bool: ...


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 6)


def failure_message(result: LoadResult) -> str:
    adapter_id, revision = parse_lora_id(result.key)
    return (f"adapter {adapter_id!r} (revision {revision}) could not be loaded: "
            f"{type(result.error).__name__}: {result.error}")


class SchedulerResidency:
    """The catalog adapters one scheduler process holds in host memory.

    ``metrics``: counters and gauges (sglang/metrics.py SchedulerMetrics); ``agreement``: a
    rank_agreement.TensorParallelAgreement under tensor parallelism, else None; ``share``: the
    node_share.NodeShare rank 0 publishes its reads to, else None."""

    def __init__(self, engine: EngineAdapters, catalog, *, budget_bytes: int, pinned=(), load_workers: int,
                 metrics, agreement=None, share=None, tp_rank: int = 0):
        self.engine = engine
        self.catalog = catalog
        self.lru = HostLRU(budget_bytes, pinned=pinned, group_of=lambda lora_id: parse_lora_id(lora_id)[0])
        self.loader = ColdLoader(self._read, workers=load_workers)
        self.wanted: OrderedDict[str, None] = OrderedDict()  # reads waiting for room, in arrival order
        self.reading: set[str] = set()  # reads started and not yet installed or failed
        # (rid, lora id) of holds to let go, drained on the loop
        self.released: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
        self.agreement = agreement
        self.tp_rank = tp_rank
        self.finished_here: dict[str, LoadResult] = {}  # finished on this rank, not yet on every rank
        self.ended_here: dict[str, str] = {}  # rid -> lora id: released on this rank, not yet on every rank
        self.now = time.monotonic()  # the clock failures age by: rank 0's under tensor parallelism
        # Under tensor parallelism rank 0 reads each adapter and the others map its copy (node_share.py);
        # reads are numbered in start order, the same on every rank.
        self.share = share
        self.read_seq = 0
        self.seq_of: dict[str, int] = {}
        self.failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self.installed_total = 0
        self.trim_due = False
        self.requests = 0  # catalog-adapter requests that reached this scheduler
        self.misses = 0  # of which found their adapter out of host memory
        self.load_seconds: list[float] = []  # recent cold-read durations, for /mint/status
        self.read_sources: dict[str, str] = {}  # lora id -> "disk" or "s3", set by the read's worker
        self.metrics = metrics

    # -- on a worker thread ------------------------------------------------
    def _read(self, lora_id: str):
        """Build the adapter ``lora_id`` names; under tensor parallelism rank 0 reads it and the
        other ranks map rank 0's copy (node_share.py)."""
        rev = self._revision(lora_id)
        self.read_sources[lora_id] = self.catalog.read_source(rev)
        if self.share is None:
            return self.engine.read(lora_id, rev)
        seq = self.seq_of[lora_id]
        if self.tp_rank != 0:
            return self.engine.attach(lora_id, self.share, seq)
        try:
            adapter, nbytes = self.engine.read(lora_id, rev)
            self.share.publish(seq, adapter)
        except Exception as exc:
            self.share.publish_failure(seq, f"{type(exc).__name__}: {exc}")
            raise
        return adapter, nbytes

    # -- from any thread ---------------------------------------------------
    def release(self, rid: str, lora_id: str) -> None:
        """Request ``rid`` for ``lora_id`` ended: its hold goes on the loop. Call it once per
        ``on_arrival`` (a ``weakref.finalize`` guarantees that)."""
        self.released.put((rid, lora_id))

    # -- on the scheduler loop ---------------------------------------------
    def install_ready(self) -> None:
        """Let go of ended requests, hand finished reads to the engine (O(1) each), start reads."""
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
        self.read_sources.pop(lora_id, None)
        self._unshare(lora_id)
        self.reading.discard(lora_id)
        self.lru.cancelled(lora_id)
        self._remember_failure(lora_id, message)

    def _install(self, result: LoadResult) -> None:
        adapter, nbytes = result.value
        self.reading.discard(result.key)
        self.engine.install(result.key, adapter)
        self._evict(self.lru.loaded(result.key, nbytes))  # the real size, which may exceed the estimate
        self.trim_due = True  # the read's buffers are free now
        self.installed_total += 1
        self.load_seconds.append(result.load_seconds)
        del self.load_seconds[:-1024]
        self.metrics.cold_loads.inc()
        self.metrics.cold_load_seconds.observe(result.load_seconds)
        source = self.read_sources.pop(result.key, "disk")
        if self.tp_rank == 0:  # the other ranks map rank 0's copy (node_share.py): one load per engine
            self.metrics.adapter_load_seconds.labels(source).observe(result.load_seconds)
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
            if self.share is not None:  # the number names the shared copy; without a share nothing reads it
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
            self.engine.unload(lora_id)
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

    def on_arrival(self, lora_id: str) -> bool:
        """A request for ``lora_id`` arrived: hold its adapter until ``release``, and want it read.
        True if the adapter is resident."""
        self.requests += 1
        self.metrics.requests.inc()
        self.lru.hold(lora_id)
        if self.engine.is_resident(lora_id):
            self.lru.touched(lora_id)
            self.metrics.hits.inc()
            return True
        self.misses += 1
        self.metrics.misses.inc()
        if lora_id not in self.failures:
            self._want(lora_id)
        return False

    def yield_to_reads(self) -> None:
        """Called by a loop iteration that ran nothing: pause ``READ_YIELD_S`` while reads are in flight.

        The loop would spin holding the GIL while its only work is waiting for reads, and a
        read thread gets the GIL back only at each switch interval, once per torch call:
        measured on CPU, a 14 MB adapter took 0.32 s to read beside a spinning loop. A short
        sleep hands the GIL over. (Under TP the ranks' exchange blocks in gloo, which does too.)
        """
        if self.reading and self.agreement is None:
            time.sleep(READ_YIELD_S)

    def on_end(self) -> None:
        """A request ended on the loop and was ``release``d: let its hold go now (under tensor
        parallelism the next agreed iteration does)."""
        if self.agreement is None:
            self._drain_released()

    def admit(self, lora_id: str) -> None | bool | str:
        """Admission of a request for ``lora_id``: None = resident (the engine decides), False =
        wait for its read, a message = its read failed lately: fail the request with it."""
        if self.agreement is None:  # under tensor parallelism only the once-per-iteration exchange installs
            self.install_ready()
        if self.engine.is_resident(lora_id):
            self.lru.touched(lora_id)
            return None
        failure = self.failures.get(lora_id)
        if failure is not None:
            failed_at, message = failure
            if self.now - failed_at < FAILURE_MEMORY_S:
                return message
            del self.failures[lora_id]
        self._want(lora_id)  # a failure expired: try again
        return False

    def status(self) -> dict:
        # Read on the loop (SGLang answers get_internal_state inside ingest_requests, before the
        # iteration's install_ready): requests that ended since the last iteration let go first,
        # so a read right after the last response reports none in use. Under tensor parallelism
        # the ranks let go together, at the next agreed iteration.
        if self.agreement is None:
            self._drain_released()
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
        }
