"""The simulated engine against cases whose answer is known exactly."""

import numpy as np
import pytest

from sglang_mint.capacity.simulate import EngineModel, Simulation, Traffic, zipf_adapters

MB = 10**6


def engine(budget_adapters, **kw):
    """1 MB adapters; reads and copies take no time unless ``kw`` says otherwise."""
    base = dict(host_budget_bytes=budget_adapters * MB, adapter_file_bytes=MB, adapter_host_bytes=MB, adapter_reserve_bytes=MB,
                adapter_gpu_bytes=0, gpu_slots=8, load_workers=2, read_overhead_s=0.0, source_bytes_per_s=1e18,
                pcie_bytes_per_s=1e18, read_overhead_fixed=True)
    return EngineModel(**{**base, **kw})


def open_loop(catalog, s, requests=40_000, warmup=5_000, **kw):
    """One request a second, each over in a millisecond: no two overlap, so no holds get in the way."""
    return Traffic(catalog_size=catalog, zipf_s=s, requests=requests, warmup_requests=warmup,
                   request_seconds=1e-3, rate=1.0, **kw)


def hit_rate(counts):
    return sum(c.hits for c in counts) / sum(c.requests for c in counts)


def test_zipf_sampler_follows_the_law():
    k = zipf_adapters(3, 1.0, 300_000, np.random.default_rng(0))
    # weights 1, 1/2, 1/3 over 11/6
    assert np.bincount(k, minlength=3) / k.size == pytest.approx([6 / 11, 3 / 11, 2 / 11], abs=0.003)


def test_one_slot_lru_hits_when_the_same_adapter_comes_twice_in_a_row():
    # Two adapters with weights 1 and 1/2, room for one: a hit iff the previous request was for the
    # same adapter, so the hit rate is p0^2 + p1^2 = (2/3)^2 + (1/3)^2 = 5/9.
    counts = Simulation(open_loop(2, 1.0), engine(1), 1).run()
    assert hit_rate(counts) == pytest.approx(5 / 9, abs=0.01)


def test_uniform_popularity_hits_in_proportion_to_the_cache():
    # zipf s=0 is uniform: whatever the cache holds, the next request finds it with probability 30/200.
    counts = Simulation(open_loop(200, 0.0), engine(30), 1).run()
    assert hit_rate(counts) == pytest.approx(30 / 200, abs=0.01)


def test_hit_rate_never_falls_as_the_budget_grows():
    # LRU is a stack algorithm: on one stream a larger cache holds all a smaller one does.
    rates = [hit_rate(Simulation(open_loop(5_000, 1.1, requests=20_000, warmup=0), engine(b), 1).run())
             for b in (1, 4, 16, 64, 256, 1024, 5_000)]
    assert rates == sorted(rates) and rates[0] < 0.25 < rates[-2] < rates[-1]
    assert all(a < b for a, b in zip(rates, rates[1:]))


def test_requests_for_one_cold_adapter_share_one_read():
    traffic = Traffic(catalog_size=1, zipf_s=1.0, requests=10, warmup_requests=0, request_seconds=0.5, clients=2)
    counts = Simulation(traffic, engine(1, read_overhead_s=1.0), 1).run()[0]
    # both clients' first requests arrive at t=0 and wait for the one read; the other eight hit
    assert (counts.requests, counts.hits, counts.cold_loads) == (10, 8, 1)
    assert counts.cold_waits == pytest.approx([1.0, 1.0])


def test_reads_queue_for_the_load_link():
    # The docstring's example: 28 MB at 1 GB/s after 5 ms of overhead each, two workers.
    traffic = Traffic(catalog_size=2, zipf_s=1.0, requests=2, warmup_requests=0, request_seconds=1.0, clients=2)
    sim = Simulation(traffic, engine(4, adapter_file_bytes=28 * MB, read_overhead_s=0.005, source_bytes_per_s=1e9), 1)
    sim.adapters = [0, 1]
    counts = sim.run()[0]
    assert counts.cold_waits == pytest.approx([0.033, 0.061])
    assert counts.read_seconds == pytest.approx([0.033, 0.061])


def test_a_read_waits_for_room_while_the_resident_adapter_is_in_use():
    # Room for one adapter; adapter 0 is in use for 1 s, so adapter 1's read starts only when it ends.
    traffic = Traffic(catalog_size=2, zipf_s=1.0, requests=2, warmup_requests=0, request_seconds=1.0, clients=2)
    sim = Simulation(traffic, engine(1, read_overhead_s=0.25), 1)
    sim.adapters = [0, 1]
    counts = sim.run()[0]
    assert counts.cold_waits == pytest.approx([0.25, 0.25 + 1.0 + 0.25])
    assert counts.evictions == 1


def test_a_gpu_slot_miss_copies_over_pcie():
    traffic = Traffic(catalog_size=3, zipf_s=1.0, requests=4, warmup_requests=0, request_seconds=0.1, clients=1)
    sim = Simulation(traffic, engine(8, gpu_slots=1, adapter_gpu_bytes=MB, pcie_bytes_per_s=10 * MB), 1)
    sim.adapters = [0, 0, 1, 0]
    counts = sim.run()[0]
    assert counts.gpu_hits == 1  # the second request; 1 then 0 again need the one slot back
    assert counts.cold_waits == pytest.approx([0.1, 0.1])  # the two cold ones copied 1 MB at 10 MB/s


def test_affinity_keeps_each_adapter_on_one_engine_and_round_robin_does_not():
    traffic = open_loop(50, 1.1, requests=2_000, warmup=0)
    seen = {}
    for routing in ("affinity", "round-robin"):
        sim = Simulation(traffic, engine(1_000), 3, routing)
        sim.run()
        seen[routing] = [set(e.lru.keys()) for e in sim.engines]
    a = seen["affinity"]
    assert not (a[0] & a[1] or a[0] & a[2] or a[1] & a[2]) and all(a)
    assert seen["round-robin"][0] & seen["round-robin"][1]


def test_the_stream_depends_only_on_the_seed():
    runs = [Simulation(open_loop(1_000, 1.1, requests=3_000, warmup=0, seed=seed), engine(50), 1) for seed in (7, 7, 8)]
    counts = [r.run()[0] for r in runs]
    assert counts[0].hits == counts[1].hits and runs[0].adapters == runs[1].adapters != runs[2].adapters


def test_read_overheads_are_drawn_exponentially_around_the_mean():
    # Uniform over 10^5 adapters through room for 10: almost every request reads, one at a time.
    traffic = Traffic(catalog_size=100_000, zipf_s=0.0, requests=20_000, warmup_requests=0, request_seconds=1e-3,
                      rate=1.0)
    reads = sorted(Simulation(traffic, engine(10, read_overhead_s=0.01, read_overhead_fixed=False), 1)
                   .run()[0].read_seconds)
    assert len(reads) > 19_000
    assert reads[len(reads) // 2] == pytest.approx(0.01 * np.log(2), rel=0.05)
    assert reads[int(0.99 * len(reads))] == pytest.approx(0.01 * np.log(100), rel=0.1)


@pytest.mark.parametrize("seed", range(3))
def test_every_request_is_served_when_reads_wait_for_room(seed):
    # parallel_bench's DP=2 round-robin run: 16 clients on 2 engines, each with room for 8 rank-4 tiny
    # adapters (73,728 bytes held, 87,808 charged while read). A read reserved in the same pass as
    # one told to wait must still start, or every client waits for it and the run stalls.
    traffic = Traffic(catalog_size=64, zipf_s=1.1, requests=1_000, warmup_requests=0, request_seconds=0.4,
                      clients=16, seed=seed)
    model = EngineModel(host_budget_bytes=600_000, adapter_file_bytes=32_768, adapter_host_bytes=73_728,
                        adapter_reserve_bytes=87_808, adapter_gpu_bytes=65_536, gpu_slots=8, load_workers=2,
                        read_overhead_s=0.0056, source_bytes_per_s=3e9, pcie_bytes_per_s=50e9)
    counts = Simulation(traffic, model, 2, "round-robin").run()
    assert sum(c.requests for c in counts) == 1_000
