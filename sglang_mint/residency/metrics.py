"""Prometheus metrics of sglang-mint, on the engine's ``/metrics`` (SGLang: ``--enable-metrics``).

Created in the process that updates them (the scheduler for residency, the
tokenizer manager for resolves); SGLang's multiprocess collector merges them.
Names share SGLang's ``sglang:`` prefix. Whether metrics are on is the
engine's to say (``sglang_mint/sglang/metrics.py:metrics_enabled``); with
``enabled=False`` every instrument is a no-op.
"""

from __future__ import annotations

import contextlib
import time

COLD_LOAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class _Off:
    """Stands in for every instrument when metrics are off."""

    def inc(self, *a, **k): ...
    def observe(self, *a, **k): ...
    def set(self, *a, **k): ...

    def labels(self, *a, **k):
        return self


def _instruments(enabled: bool):
    if not enabled:
        off = _Off()
        return (lambda *a, **k: off,) * 3
    # Imported here: prometheus_client must see PROMETHEUS_MULTIPROC_DIR, set by SGLang first.
    from prometheus_client import Counter, Gauge, Histogram

    return Counter, Gauge, Histogram


class SchedulerMetrics:
    def __init__(self, enabled: bool):
        Counter, Gauge, Histogram = _instruments(enabled)

        self.requests = Counter("sglang:mint_requests_total", "Catalog-adapter requests that reached the scheduler.")
        self.hits = Counter("sglang:mint_hits_total", "Requests whose adapter was in host memory on arrival.")
        self.misses = Counter("sglang:mint_misses_total", "Requests whose adapter was not in host memory on arrival.")
        self.cold_loads = Counter("sglang:mint_cold_loads_total", "Adapters read from disk and installed.")
        self.failed_loads = Counter("sglang:mint_failed_loads_total", "Adapter reads that failed.")
        self.evictions = Counter("sglang:mint_evictions_total", "Adapters evicted from host memory.")
        self.cold_load_seconds = Histogram("sglang:mint_cold_load_seconds", "Time to read and decode one adapter.",
                                           buckets=COLD_LOAD_BUCKETS)
        # vLLM's name, which llm-d's router reads beside vllm:lora_adapter_loaded (lora_requests_info.py):
        # source "disk" or "s3" for a read from the catalog into host memory, "host" for a copy from host
        # memory into a GPU pool slot.
        self.adapter_load_seconds = Histogram("vllm:lora_adapter_load_seconds",
                                              "Time to load one LoRA adapter, by where it came from.",
                                              labelnames=["source"], buckets=COLD_LOAD_BUCKETS)
        self.queue_wait_seconds = Histogram("sglang:mint_queue_wait_seconds",
                                            "Time a request waited in the queue for its adapter's load.",
                                            buckets=COLD_LOAD_BUCKETS)
        self.host_bytes = Gauge("sglang:mint_host_bytes", "Bytes of catalog adapters in host memory.",
                                multiprocess_mode="livesum")
        self.resident = Gauge("sglang:mint_resident_adapters", "Catalog adapters in host memory.",
                              multiprocess_mode="livesum")


class FrontendMetrics:
    def __init__(self, enabled: bool):
        Counter, _, _ = _instruments(enabled)

        self.resolves = Counter("sglang:mint_resolves_total", "Adapter ids resolved in the catalog.")
        self.not_found = Counter("sglang:mint_not_found_total", "Adapter ids not in the catalog (404).")


@contextlib.contextmanager
def timed_host_load(metrics: SchedulerMetrics | None):
    """Time one copy of an adapter from host memory into a GPU pool slot, as
    ``vllm:lora_adapter_load_seconds{source="host"}``; None: not timed (no catalog, or the
    base model's zero-filled slot)."""
    started = time.perf_counter()
    try:
        yield
    finally:
        if metrics is not None:
            metrics.adapter_load_seconds.labels("host").observe(time.perf_counter() - started)
