"""The scheduler's residency state machine (scheduler_residency.py) over a fake engine, without SGLang.

Keys are plain ``"mint:<adapter>@<revision>"`` strings, so the estimate comes from a
fake catalog; reads run on the real ColdLoader threads and finish when they finish,
and ``settle`` runs loop iterations until none is under way.
"""

from __future__ import annotations

import os

import threading
import time
from types import SimpleNamespace

from sglang_mint.residency import scheduler_residency
from sglang_mint.residency.host_bytes import ADAPTER_OVERHEAD_BYTES, read_estimate_bytes
from sglang_mint.residency.rank_agreement import RankView, agree
from sglang_mint.residency.scheduler_residency import SchedulerResidency

BUDGET = 100_000
A, B, C = "mint:a@1", "mint:b@1", "mint:c@1"


class FakeCatalog:
    """``get_revision`` answers a record whose read estimate is ``estimates[adapter_id]`` bytes."""

    def __init__(self, estimates: dict[str, int]):
        self.estimates = estimates
        self.lookups = 0
        self.remote: set[str] = set()  # adapters whose blobs are not on this machine's disk

    def read_source(self, rev):
        return "s3" if rev.adapter_id in self.remote else "disk"

    def get_revision(self, adapter_id: str, revision: int):
        self.lookups += 1
        loaded = self.estimates[adapter_id] - ADAPTER_OVERHEAD_BYTES
        return SimpleNamespace(adapter_id=adapter_id, revision=revision, size_bytes=loaded,
                               loaded_bytes=loaded, tensor_count=0)


class FakeEngine:
    """EngineAdapters over a dict. A read of ``key`` waits for ``gate``, then holds
    ``real_bytes[key]`` once built, or raises ``failing[key]``."""

    def __init__(self, real_bytes: dict[str, int]):
        self.real_bytes = real_bytes
        self.failing: dict[str, Exception] = {}
        self.gate = threading.Event()
        self.gate.set()
        self.reads: list[str] = []  # in start order (one worker thread)
        self.installed: dict[str, object] = {}
        self.unloaded: list[str] = []

    def read(self, key, rev):
        self.reads.append(key)
        assert self.gate.wait(10)
        if key in self.failing:
            raise self.failing[key]
        return f"adapter {key}", self.real_bytes[key]

    def attach(self, key, share, seq):
        raise AssertionError("no node share in these tests")

    def install(self, key, adapter):
        self.installed[key] = adapter

    def unload(self, key):
        self.unloaded.append(key)
        self.installed.pop(key, None)

    def is_resident(self, key):
        return key in self.installed


class Instrument:
    def __init__(self):
        self.value = 0
        self.observed: list[float] = []
        self.by_label: dict[tuple, "Instrument"] = {}

    def labels(self, *values):
        return self.by_label.setdefault(values, Instrument())

    def inc(self):
        self.value += 1

    def observe(self, value):
        self.observed.append(value)

    def set(self, value):
        self.value = value


class Metrics:
    """Stands in for SchedulerMetrics: any instrument, made on first use."""

    def __getattr__(self, name):
        instrument = Instrument()
        setattr(self, name, instrument)
        return instrument


def make(estimate: int = 60_000, real: int | None = None, agreement=None):
    engine = FakeEngine({key: estimate if real is None else real for key in (A, B, C)})
    catalog = FakeCatalog({"a": estimate, "b": estimate, "c": estimate})
    residency = SchedulerResidency(engine, catalog, budget_bytes=BUDGET, load_workers=1, metrics=Metrics(),
                                   agreement=agreement)
    return residency, engine


def settle(residency: SchedulerResidency, timeout: float = 10.0) -> None:
    """Loop iterations until no read is under way."""
    deadline = time.monotonic() + timeout
    while residency.reading:
        assert time.monotonic() < deadline, f"reads of {residency.reading} did not finish"
        residency.install_ready()
        time.sleep(0.001)


def end(residency: SchedulerResidency, rid: str, key: str) -> None:
    residency.release(rid, key)
    residency.on_end()


def test_the_estimate_is_what_the_catalog_records_the_adapter_holds():
    # The arithmetic the other tests rely on: one 60,000-byte adapter fits the budget, two do not.
    residency, _ = make()
    assert residency._estimate(A) == read_estimate_bytes(35_424, 35_424, 0) == 60_000


def test_each_read_is_timed_under_where_its_bytes_came_from():
    residency, _ = make()
    residency.catalog.remote.add("b")
    for i, key in enumerate((A, B)):
        residency.on_arrival(key)  # a miss: its read starts
        settle(residency)
        assert residency.admit(key) is None
        end(residency, f"r{i}", key)
    by_source = residency.metrics.adapter_load_seconds.by_label
    assert {k: len(v.observed) for k, v in by_source.items()} == {("disk",): 1, ("s3",): 1}
    assert residency.read_sources == {}  # nothing kept once installed


def test_a_miss_is_read_installed_then_admitted_and_the_next_request_hits():
    residency, engine = make()
    engine.gate.clear()
    assert residency.on_arrival(A) is False
    assert residency.admit(A) is False and residency.admit(A) is False  # waits while its read runs
    assert residency.status()["loading"] == 1 and engine.installed == {}
    engine.gate.set()
    settle(residency)
    assert engine.installed == {A: f"adapter {A}"}
    assert residency.admit(A) is None
    assert residency.on_arrival(A) is True
    status = residency.status()
    assert status["requests"] == 2 and status["hit_rate"] == 0.5
    assert status["cold_loads"] == 1 and status["host_bytes"] == 60_000 and status["adapters_in_use"] == 1
    # read on the scheduler's loop: no walk of its page tables (the frontend reads those by pid)
    assert "pss_bytes" not in status and status["pid"] == os.getpid()


def test_without_a_node_share_no_state_is_kept_per_adapter_ever_read():
    residency, _ = make()
    for i, key in enumerate((A, B, C) * 3):  # each read evicts the one before: nine reads, one resident
        residency.on_arrival(key)
        settle(residency)
        end(residency, f"r{i}", key)
    assert residency.status()["cold_loads"] == 9 and residency.status()["resident"] == 1
    assert residency.seq_of == {}  # it kept one entry per adapter ever read


def test_an_adapter_in_use_is_never_evicted_and_a_read_waits_for_room():
    residency, engine = make()
    residency.on_arrival(A)
    settle(residency)
    residency.on_arrival(B)  # a and b together exceed the budget, and a is held
    assert residency.admit(B) is False
    assert list(residency.wanted) == [B] and engine.reads == [A] and engine.unloaded == []
    assert residency.status()["reads_waiting_for_room"] == 1
    end(residency, "r1", A)  # a is idle now: evicted to make room for b's read
    assert engine.unloaded == [A] and B in residency.reading
    settle(residency)
    assert engine.installed == {B: f"adapter {B}"} and residency.admit(B) is None
    assert residency.status()["evictions"] == 1


def test_a_hold_lasts_until_the_last_request_for_the_adapter_ends():
    residency, engine = make()
    residency.on_arrival(A)
    residency.on_arrival(A)
    settle(residency)
    residency.on_arrival(B)
    end(residency, "r1", A)  # one of a's two requests ended: a is still in use
    assert engine.unloaded == [] and list(residency.wanted) == [B]
    end(residency, "r2", A)
    assert engine.unloaded == [A]


def test_waiting_reads_start_in_arrival_order_as_room_frees():
    residency, engine = make()
    residency.on_arrival(A)
    settle(residency)
    residency.on_arrival(C)
    residency.on_arrival(B)
    assert list(residency.wanted) == [C, B]
    end(residency, "r1", A)  # room for one read: c's, which arrived first
    assert residency.reading == {C} and list(residency.wanted) == [B]
    settle(residency)
    end(residency, "r2", C)
    settle(residency)
    assert engine.reads == [A, C, B] and engine.unloaded == [A, C]


def test_a_failed_read_fails_only_its_adapters_requests():
    residency, engine = make(estimate=30_000)
    engine.failing[B] = OSError("gone")
    residency.on_arrival(A)
    residency.on_arrival(B)
    settle(residency)
    assert residency.admit(A) is None
    message = residency.admit(B)
    assert message == "adapter 'b' (revision 1) could not be loaded: OSError: gone"
    status = residency.status()
    assert status["failed_loads"] == 1 and status["host_reserved_bytes"] == 0 and status["host_bytes"] == 30_000
    # A request arriving while the failure is remembered fails at once, without another read.
    assert residency.on_arrival(B) is False
    assert residency.admit(B) == message and engine.reads.count(B) == 1


def test_a_remembered_failure_expires_and_the_next_request_reads_again(monkeypatch):
    monkeypatch.setattr(scheduler_residency, "FAILURE_MEMORY_S", 0.2)
    residency, engine = make()
    engine.failing[A] = ValueError("bad tensor")
    residency.on_arrival(A)
    settle(residency)
    assert isinstance(residency.admit(A), str)
    del engine.failing[A]  # e.g. a file that was missing is back
    time.sleep(0.25)
    residency.install_ready()  # the loop's clock moves on
    assert residency.admit(A) is False  # forgotten: read again
    settle(residency)
    assert residency.admit(A) is None and engine.reads == [A, A]


def test_the_real_size_corrects_the_estimate_and_evicts_idle_adapters_when_over():
    # Charged 30,000 before each read, each adapter holds 60,000 once built.
    residency, engine = make(estimate=30_000, real=60_000)
    residency.on_arrival(A)
    settle(residency)
    end(residency, "r1", A)
    assert residency.lru.bytes == 60_000
    residency.on_arrival(B)  # 60,000 + 30,000 fits: no eviction before the read
    assert engine.unloaded == [] and B in residency.reading
    settle(residency)  # b holds 60,000: 120,000 is over, so idle a goes
    assert engine.unloaded == [A] and residency.lru.keys() == [B] and residency.lru.bytes == 60_000
    assert residency.status()["evictions"] == 1


def test_the_real_size_never_evicts_an_adapter_in_use():
    residency, engine = make(estimate=30_000, real=60_000)
    residency.on_arrival(A)
    settle(residency)
    residency.on_arrival(B)
    settle(residency)
    assert engine.unloaded == [] and residency.lru.bytes == 120_000  # over, until a request ends
    end(residency, "r1", A)
    residency.on_arrival(C)  # the next read makes room from what is idle now
    assert engine.unloaded == [A]


def read_on_this_rank(residency: SchedulerResidency, key: str, timeout: float = 10.0) -> None:
    """Loop iterations until this rank has finished reading ``key`` (it installs only once every rank has)."""
    deadline = time.monotonic() + timeout
    while key not in residency.finished_here:
        assert time.monotonic() < deadline, f"the read of {key} did not finish"
        residency.install_ready()
        time.sleep(0.001)


class TwoRanks:
    """A tensor-parallel agreement where the other rank's view is whatever the test says."""

    def __init__(self):
        self.other = RankView()
        self.exchanges = 0

    def exchange(self, mine: RankView):
        mine.now = time.monotonic()
        self.exchanges += 1
        return agree([mine, self.other])


def test_under_tensor_parallelism_a_read_installs_once_every_rank_finished_it():
    ranks = TwoRanks()
    residency, engine = make(agreement=ranks)
    residency.on_arrival(A)
    read_on_this_rank(residency, A)
    assert residency.admit(A) is False and engine.installed == {}  # the other rank is still reading
    ranks.other = RankView({A: None})
    residency.install_ready()
    assert residency.admit(A) is None and A in engine.installed


def test_under_tensor_parallelism_a_hold_ends_once_every_rank_ended_it():
    ranks = TwoRanks()
    residency, engine = make(agreement=ranks)
    residency.on_arrival(A)
    read_on_this_rank(residency, A)
    ranks.other = RankView({A: None})
    residency.install_ready()
    ranks.other = RankView()
    end(residency, "r1", A)  # ended here only: on_end lets nothing go under tensor parallelism
    residency.install_ready()
    assert residency.lru.held == 1
    ranks.other = RankView({}, ["r1"])
    residency.install_ready()
    assert residency.lru.held == 0


def test_under_tensor_parallelism_a_read_failed_on_another_rank_fails_here_with_its_message():
    ranks = TwoRanks()
    residency, engine = make(agreement=ranks)
    residency.on_arrival(A)
    read_on_this_rank(residency, A)
    ranks.other = RankView({A: "adapter 'a' (revision 1) could not be loaded: OSError: gone"})
    residency.install_ready()
    assert residency.admit(A) == ranks.other.finished[A] and engine.installed == {}
    assert residency.status()["host_reserved_bytes"] == 0

