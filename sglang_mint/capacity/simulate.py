"""Engines replayed over a sampled request stream: host LRU, load workers, source link, GPU slots.

One engine, as ``residency/scheduler_residency.py`` and SGLang's LoRA pool run it:

1. A request for adapter k arrives (k drawn from zipf(s) over the catalog, seeded) and holds k
   until it ends (``HostLRU.hold``). k resident in host memory: a hit. Otherwise a miss, and k's
   read starts, unless one is under way (requests for one cold adapter share one read) or the
   budget has no room for the engine's estimate of it (``HostLRU.reserve`` returns None: the read
   waits for a request to end).
2. A read waits for one of ``load_workers`` workers (first come, first served, as ``ColdLoader``'s
   thread pool), spends an overhead (open, parse, build the tensors; exponentially distributed
   with mean ``read_overhead_s``, so its median is 0.69 and its p99 4.6 times the mean, or exactly
   the mean with ``read_overhead_fixed``), then moves the adapter's file bytes over the engine's
   source link (disk or S3) at ``source_bytes_per_s``, one transfer at a time in the order they
   become ready; its worker is free when the transfer ends.
3. Installed (``HostLRU.loaded``, its real size replacing the estimate): idle adapters over budget
   are evicted, least recently used first, never a held or pinned one. A cold load is one
   installed read.
4. The request then needs a GPU slot: ``gpu_slots`` of them, the least recently used replaced
   (SGLang's ``--lora-eviction-policy lru``). A slot miss copies the adapter over PCIe at
   ``pcie_bytes_per_s``, one copy at a time. Slots in use are not protected here: SGLang makes
   a request wait when more adapters are in flight than slots, which the result reports as
   ``in_flight_p99`` (adapters held at an arrival) instead of simulating it.
5. It runs ``request_seconds`` and ends (``HostLRU.release``), which may let a waiting read start.

A request's cold wait runs from its arrival until its adapter is in a GPU slot; hit rate and cold
loads count as ``/mint/status`` counts them (a request arriving during its adapter's read is a
miss, not a load). Example: 80 MiB adapters, disk 3 GB/s, 5 ms overhead, 2 workers, two cold
adapters at t=0 (fixed overheads): both overheads end at 5 ms, the first transfer at 5 + 28 = 33 ms, the second
waits for the link and ends at 61 ms. At 100 cold loads/s the link would need 100 x 28 ms =
2.8 s of transfer a second (``link_utilization`` 2.8): the queue and the p99 grow without bound.

Traffic is open (``rate``: Poisson arrivals) or closed (``clients``: each sends its next request
when the last ends, as ``make demo`` and the benchmarks do). The first ``warmup_requests``
warm the caches and are not counted. Engines split the traffic by ``routing``: ``affinity``
(each adapter on its first engine by ``residency/affinity.py:preference``, as the gateway's
consistent hashing keeps an adapter on one engine), ``bounded`` (``affinity.pick_rank`` over the
requests in flight: ``--dp-size`` dispatch) or ``round-robin``.
"""

from __future__ import annotations

import heapq
import random
from collections import OrderedDict, deque
from dataclasses import dataclass, field

import numpy as np

from sglang_mint.residency.affinity import pick_rank, preference
from sglang_mint.residency.host_lru import HostLRU

ROUTINGS = ("affinity", "bounded", "round-robin")
READ_DONE, TRANSFER, END, ARRIVE = 0, 1, 2, 3  # at one instant: installs, transfers, ends, arrivals


@dataclass(frozen=True)
class Traffic:
    catalog_size: int
    zipf_s: float
    requests: int
    warmup_requests: int
    request_seconds: float  # once its adapter is in a GPU slot: prefill and decode
    rate: float | None = None  # requests/s, Poisson (open loop)
    clients: int | None = None  # or this many clients back to back (closed loop)
    seed: int = 0


@dataclass(frozen=True)
class EngineModel:
    host_budget_bytes: int
    adapter_file_bytes: int
    adapter_host_bytes: int
    adapter_reserve_bytes: int  # charged while its read is under way (read_estimate_bytes)
    adapter_gpu_bytes: int
    gpu_slots: int
    load_workers: int
    read_overhead_s: float  # the mean
    source_bytes_per_s: float
    pcie_bytes_per_s: float
    pinned_top: int = 0  # the most popular adapters, never evicted (--mint-pin)
    read_overhead_fixed: bool = False  # every read's overhead is the mean, not drawn


@dataclass
class EngineCounts:
    requests: int = 0
    hits: int = 0
    cold_loads: int = 0
    evictions: int = 0
    gpu_hits: int = 0
    cold_waits: list[float] = field(default_factory=list)
    read_seconds: list[float] = field(default_factory=list)
    in_flight: list[int] = field(default_factory=list)  # adapters held at each counted arrival


class Engine:
    def __init__(self, model: EngineModel):
        self.m = model
        self.lru = HostLRU(model.host_budget_bytes, pinned=range(model.pinned_top), group_of=lambda k: k)
        self.free_workers = model.load_workers
        self.worker_queue: deque[int] = deque()  # reserved reads waiting for a worker
        self.link_free = self.pcie_free = 0.0
        self.reading: dict[int, list[int]] = {}  # adapter -> requests waiting for its read
        self.wanted: OrderedDict[int, list[int]] = OrderedDict()  # reads waiting for room
        self.slots: OrderedDict[int, None] = OrderedDict()
        self.running = 0  # requests in flight
        self.counts = EngineCounts()


def zipf_adapters(catalog_size: int, s: float, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` adapter indices, index k drawn with weight 1/(k+1)^s (the demo's and benchmarks' law)."""
    cdf = np.cumsum(1.0 / np.arange(1, catalog_size + 1, dtype=np.float64) ** s)
    return np.minimum(np.searchsorted(cdf, rng.random(n) * cdf[-1], side="right"), catalog_size - 1)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest rank, as the benchmarks report it: p99 of 100 values is the largest."""
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Simulation:
    """One run of the stream through ``engines`` engines; ``run()`` returns each engine's counts."""

    def __init__(self, traffic: Traffic, model: EngineModel, engines: int, routing: str = "affinity"):
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {routing!r}")
        if (traffic.rate is None) == (traffic.clients is None):
            raise ValueError("traffic needs exactly one of rate and clients")
        self.t, self.model, self.routing = traffic, model, routing
        rng = np.random.default_rng(traffic.seed)
        self.adapters = zipf_adapters(traffic.catalog_size, traffic.zipf_s, traffic.requests, rng).tolist()
        self.gaps = rng.exponential(1.0 / traffic.rate, traffic.requests).tolist() if traffic.rate else None
        self.overheads = random.Random(traffic.seed)  # its own stream: the requests stay the same
        self.engines = [Engine(model) for _ in range(engines)]
        self.arrived = [0.0] * traffic.requests
        self.engine_of = [0] * traffic.requests
        self.first_choice: dict[int, int] = {}
        self.events: list[tuple] = []
        self.seq = 0
        self.next_request = 0
        self.start_s = self.end_s = 0.0  # the counted window: first counted arrival .. last arrival

    def push(self, when: float, kind: int, *payload) -> None:
        self.seq += 1
        heapq.heappush(self.events, (when, kind, self.seq, *payload))

    def run(self) -> list[EngineCounts]:
        first = self.t.clients or 1
        for _ in range(min(first, self.t.requests)):
            self.push(self.gaps[0] if self.gaps else 0.0, ARRIVE)
        while self.events:
            now, kind, _, *payload = heapq.heappop(self.events)
            if kind == ARRIVE:
                self.arrive(now)
            elif kind == READ_DONE:
                self.read_done(now, *payload)
            elif kind == TRANSFER:
                self.transfer(now, *payload)
            else:
                self.end(now, *payload)
        stuck = sum(e.running for e in self.engines)
        if stuck or self.next_request < self.t.requests:
            raise RuntimeError(f"the simulation stalled: {stuck} requests in flight, "
                               f"{self.t.requests - self.next_request} never sent")
        return [e.counts for e in self.engines]

    @property
    def window_s(self) -> float:
        return self.end_s - self.start_s

    def route(self, k: int) -> int:
        n = len(self.engines)
        if n == 1:
            return 0
        if self.routing == "round-robin":
            return self.next_request % n
        if self.routing == "bounded":
            return pick_rank(str(k), [e.running for e in self.engines], list(range(n)))
        if k not in self.first_choice:
            self.first_choice[k] = preference(str(k), list(range(n)))[0]
        return self.first_choice[k]

    def arrive(self, now: float) -> None:
        i = self.next_request
        if i >= self.t.requests:  # clients that ended at one instant each asked for the last request
            return
        k = self.adapters[i]
        e = self.route(k)
        self.next_request += 1
        if self.gaps and self.next_request < self.t.requests:
            self.push(now + self.gaps[self.next_request], ARRIVE)
        eng = self.engines[e]
        self.arrived[i], self.engine_of[i] = now, e
        counted = i >= self.t.warmup_requests
        if i == self.t.warmup_requests:
            self.start_s = now
        self.end_s = now
        eng.running += 1
        eng.lru.hold(k)
        c = eng.counts
        if counted:
            c.requests += 1
            c.in_flight.append(eng.lru.held)
        if k in eng.lru:
            eng.lru.touched(k)
            if counted:
                c.hits += 1
            self.on_gpu(eng, i, k, now, cold=False)
        elif k in eng.reading:
            eng.reading[k].append(i)
        elif k in eng.wanted:
            eng.wanted[k].append(i)
        else:
            eng.wanted[k] = [i]
            self.start_reads(e, now)

    def start_reads(self, e: int, now: float) -> None:
        """Wanted reads, oldest first, while the budget has room (scheduler_residency._start_reads)."""
        eng, m = self.engines[e], self.model
        while eng.wanted:
            k = next(iter(eng.wanted))
            victims = eng.lru.reserve(k, m.adapter_reserve_bytes)
            if victims is None:
                break  # waits for a request to end
            self.evict(eng, victims)
            eng.reading[k] = eng.wanted.pop(k)
            eng.worker_queue.append(k)
        self.dispatch(e, now)

    def dispatch(self, e: int, now: float) -> None:
        """Free workers take queued reads; each spends its overhead, then waits for the link."""
        eng, m = self.engines[e], self.model
        while eng.free_workers and eng.worker_queue:
            eng.free_workers -= 1
            overhead = m.read_overhead_s
            if not m.read_overhead_fixed and overhead > 0:
                overhead = self.overheads.expovariate(1 / overhead)
            self.push(now + overhead, TRANSFER, e, eng.worker_queue.popleft(), now)

    def transfer(self, now: float, e: int, k: int, started: float) -> None:
        eng = self.engines[e]
        done = eng.link_free = max(now, eng.link_free) + self.model.adapter_file_bytes / self.model.source_bytes_per_s
        self.push(done, READ_DONE, e, k, done - started)

    def evict(self, eng: Engine, victims: list[int]) -> None:
        for v in victims:
            eng.lru.evicted(v)
            if self.next_request > self.t.warmup_requests:
                eng.counts.evictions += 1

    def read_done(self, now: float, e: int, k: int, read_s: float) -> None:
        eng = self.engines[e]
        eng.free_workers += 1
        self.evict(eng, eng.lru.loaded(k, self.model.adapter_host_bytes))
        if self.next_request > self.t.warmup_requests:
            eng.counts.cold_loads += 1
            eng.counts.read_seconds.append(read_s)
        for i in eng.reading.pop(k):
            self.on_gpu(eng, i, k, now, cold=True)
        self.dispatch(e, now)

    def on_gpu(self, eng: Engine, i: int, k: int, now: float, cold: bool) -> None:
        """Request ``i`` has its adapter in host memory at ``now``: a GPU slot, then it runs."""
        m, counted = self.model, i >= self.t.warmup_requests
        if k in eng.slots:
            eng.slots.move_to_end(k)
            ready = now
            if counted:
                eng.counts.gpu_hits += 1
        else:
            eng.slots[k] = None
            if len(eng.slots) > m.gpu_slots:
                eng.slots.popitem(last=False)
            ready = eng.pcie_free = max(now, eng.pcie_free) + m.adapter_gpu_bytes / m.pcie_bytes_per_s
        if cold and counted:
            eng.counts.cold_waits.append(ready - self.arrived[i])
        self.push(ready + self.t.request_seconds, END, self.engine_of[i], k)

    def end(self, now: float, e: int, k: int) -> None:
        eng = self.engines[e]
        eng.running -= 1
        eng.lru.release(k)
        if self.t.clients and self.next_request < self.t.requests:
            self.push(now, ARRIVE)
        self.start_reads(e, now)
