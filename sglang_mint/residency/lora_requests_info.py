"""Which adapters an engine holds, in vLLM's LoRA gauges, for llm-d's LoRA scorers.

Two signals, both from the same state files (docs/llm-d.md):

- ``vllm:lora_requests_info``, which llm-d's affinity scorer reads today;
- the residency series vLLM is replacing it with, which llm-d's load-state
  scorer reads (GPU-resident 1.0, CPU-resident 0.7, free slot 0.6)::

    vllm:lora_adapter_loaded{model_name="tiny",adapter_name="acme/bot",level="gpu",pinned="false",rank="8"} 1
    vllm:num_gpu_loaded_lora_adapters{model_name="tiny"} 1
    vllm:num_cpu_loaded_lora_adapters{model_name="tiny"} 2
    vllm:max_gpu_lora_adapters{model_name="tiny"} 8

  ``level="gpu"``: in a pool slot; ``level="cpu"``: in the host LRU and not in a
  slot (at most ``MAX_CPU_SERIES`` of them, the most recently used, so the
  series stay bounded at 10^6 adapters; ``num_cpu_loaded_lora_adapters`` counts
  them all).

The older gauge:

llm-d's endpoint picker (the Gateway API Inference Extension) scores an engine
for a request's ``model`` by reading this gauge off its ``/metrics``::

    vllm:lora_requests_info{max_lora="8",running_lora_adapters="acme/bot,acme/faq",
                            waiting_lora_adapters="acme/new"} 1.7645e+09

- ``running_lora_adapters``: the adapters in the GPU pool, named as requests
  name them in ``model`` (a catalog adapter's id, a ``--lora-paths`` adapter's
  name), comma-separated;
- ``waiting_lora_adapters``: catalog adapters being read or queued for a read
  (at most ``MAX_WAITING_NAMES`` of them);
- ``max_lora``: GPU slots, ``--max-loras-per-batch`` times the DP size;
- the value: the Unix time this state was recorded. The picker keeps, of all
  series, the one with the largest value.

SGLang's ``/metrics`` merges the processes' prometheus_client files, where a
label set once written stays forever: a gauge labelled by the adapter sets
would grow a series per combination ever seen. So each scheduler (TP rank 0 of
each DP rank) writes its current state to a small JSON file beside those files
when it changes (``engine_state``, ``write_state``; ``LoraInfoWriter``, over
the engine's LoRA manager), and the HTTP process renders the one merged series
at each scrape (``LoraInfoCollector``), e.g.
``mint_lora_info.dp0.json``::

    {"time": 1764500000.1, "max_lora": 8, "running": ["acme/bot"], "waiting": ["acme/new"],
     "model_name": "tiny", "cpu_total": 1,
     "loaded": [{"name": "acme/bot", "level": "gpu", "pinned": false, "rank": 8},
                {"name": "acme/faq", "level": "cpu", "pinned": true, "rank": 16}]}
"""

from __future__ import annotations

import glob
import itertools
import json
import os
import time
from typing import Iterable

from sglang_mint.lora_id import is_catalog_lora_id, parse_lora_id

METRIC = "vllm:lora_requests_info"
MAX_WAITING_NAMES = 256  # a read storm can queue thousands; llm-d needs to know only some are coming
MAX_CPU_SERIES = 1024  # host-resident adapters given a series of their own, most recently used first
RECENCY_REFRESH_S = 1.0  # requests reorder the host LRU: rewrite for that at most once a second
FILE_GLOB = "mint_lora_info.dp*.json"


def state_path(directory: str, dp_rank: int) -> str:
    return os.path.join(directory, f"mint_lora_info.dp{dp_rank}.json")


def adapter_name(lora_id, lora_refs) -> str | None:
    """The ``model`` string that names a pool slot's adapter: ``"mint:acme/bot@3"`` -> ``"acme/bot"``;
    a ``--lora-paths`` adapter's uuid -> its name; the base model's slot (None) or an empty one -> None."""
    if is_catalog_lora_id(lora_id):
        return parse_lora_id(lora_id)[0]
    ref = lora_refs.get(lora_id) if isinstance(lora_id, str) else None
    return None if ref is None else ref.lora_name


def engine_state(max_lora: int, running: Iterable[str | None], waiting_ids: Iterable[str],
                 loaded: list[dict] = (), cpu_total: int = 0, model_name: str = "") -> dict:
    """One scheduler's state file: ``running`` names its pool slots' adapters (None: the base
    model's slot or an empty one), ``waiting_ids`` the catalog LoRA ids read or queued, in order;
    e.g. running [None, "acme/bot"] and waiting ["mint:acme/new@1", "mint:acme/new@2"] give
    running ["acme/bot"] and waiting ["acme/new"]. ``loaded``: its residency series (the module
    doc), ``cpu_total`` how many adapters are in host memory and in no slot."""
    waiting = []
    for lora_id in waiting_ids:
        if len(waiting) == MAX_WAITING_NAMES:
            break
        waiting.append(parse_lora_id(lora_id)[0])
    return {"time": time.time(), "max_lora": max_lora,
            "running": sorted({n for n in running if n}), "waiting": list(dict.fromkeys(waiting)),
            "model_name": model_name, "cpu_total": cpu_total, "loaded": list(loaded)}


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # a scrape reads the old state or the new one, never half


class LoraInfoWriter:
    """One scheduler's side: ``refresh()`` on every loop iteration, a file write only on a change.
    ``manager`` is the engine's LoRA manager (its ``memory_pool.buffer_id_to_uid``, ``lora_refs``,
    ``configs``); ``residency`` the scheduler's SchedulerResidency (its host LRU and reads)."""

    def __init__(self, path: str, max_lora: int, manager, residency, model_name: str = ""):
        self.path = path
        self.max_lora = max_lora
        self.manager = manager
        self.residency = residency
        self.model_name = model_name
        self._last = None
        self._requests = 0
        self._written = 0.0

    def refresh(self) -> None:
        pool = self.manager.memory_pool
        if pool is None:
            return
        r = self.residency
        # Cheap to compare every iteration: the pool's slots (max_loras_per_batch of them) and counters
        # that move whenever a read is queued, started, installed or failed, or an adapter evicted.
        key = (tuple(pool.buffer_id_to_uid), len(r.wanted), len(r.reading), r.read_seq, r.installed_total,
               r.loader.failed_total, r.lru.evictions_total)
        now = time.monotonic()
        if key == self._last and (r.requests == self._requests or now - self._written < RECENCY_REFRESH_S):
            return
        self._last, self._requests, self._written = key, r.requests, now
        on_gpu = {uid: adapter_name(uid, self.manager.lora_refs) for uid in pool.buffer_id_to_uid
                  if isinstance(uid, str)}
        loaded = [self._series(uid, name, "gpu") for uid, name in on_gpu.items() if name]
        cpu = [k for k in r.lru.most_recent(MAX_CPU_SERIES + len(on_gpu)) if k not in on_gpu][:MAX_CPU_SERIES]
        loaded += [self._series(k, adapter_name(k, self.manager.lora_refs), "cpu") for k in cpu]
        cpu_total = len(r.lru) - sum(uid in r.lru for uid in on_gpu)
        write_state(self.path, engine_state(self.max_lora, on_gpu.values(), itertools.chain(r.reading, r.wanted),
                                            loaded, cpu_total, self.model_name))

    def _series(self, uid: str, name: str | None, level: str) -> dict:
        ref = self.manager.lora_refs.get(uid)
        config = self.manager.configs.get(uid)
        pinned = self.residency.lru.is_pinned(uid) if is_catalog_lora_id(uid) else bool(getattr(ref, "pinned", False))
        return {"name": name, "level": level, "pinned": pinned, "rank": getattr(config, "r", None)}


def read_states(directory: str) -> list[dict]:
    states = []
    for path in sorted(glob.glob(os.path.join(directory, FILE_GLOB))):
        try:
            with open(path) as f:
                states.append(json.load(f))
        except (OSError, ValueError):
            continue  # replaced between the glob and the open: the next scrape reads it
    return states


def merged_labels(states: list[dict]) -> tuple[dict[str, str], float] | None:
    """DP ranks' states -> the one series' labels and value (the latest of their times)."""
    if not states:
        return None
    running = sorted({n for s in states for n in s["running"]})
    running_set = set(running)
    waiting = [n for n in dict.fromkeys(n for s in states for n in s["waiting"]) if n not in running_set]
    labels = {"max_lora": str(sum(s["max_lora"] for s in states)),
              "running_lora_adapters": ",".join(running), "waiting_lora_adapters": ",".join(waiting)}
    return labels, max(s["time"] for s in states)


def merged_loaded(states: list[dict]) -> list[dict]:
    """DP ranks' residency series merged by adapter: on a GPU anywhere is ``level="gpu"``."""
    out: dict[str, dict] = {}
    for s in states:
        for entry in s.get("loaded", ()):
            seen = out.get(entry["name"])
            if seen is None:
                out[entry["name"]] = dict(entry)
            else:
                seen["pinned"] = seen["pinned"] or entry["pinned"]
                if entry["level"] == "gpu":
                    seen["level"] = "gpu"
    return sorted(out.values(), key=lambda e: (e["level"] != "gpu", e["name"]))


class LoraInfoCollector:
    """A prometheus_client collector for the HTTP process's ``/metrics`` registry."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        states = read_states(self.directory)
        merged = merged_labels(states)
        family = GaugeMetricFamily(METRIC, "Running stats on LoRA requests: the adapters this engine holds "
                                   "(deprecated in vLLM for vllm:lora_adapter_loaded).",
                                   labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        if merged is not None:
            labels, value = merged
            family.add_metric([labels["max_lora"], labels["running_lora_adapters"],
                               labels["waiting_lora_adapters"]], value)
        yield family
        yield from residency_families(states)


def residency_families(states: list[dict]):
    """vLLM's residency gauges (the module doc) for the DP ranks' ``states``."""
    from prometheus_client.core import GaugeMetricFamily

    model = next((s.get("model_name", "") for s in states), "")
    loaded = GaugeMetricFamily("vllm:lora_adapter_loaded", "LoRA adapters loaded: level gpu (a pool slot) or cpu "
                               "(host memory), one series each while loaded.",
                               labels=["model_name", "adapter_name", "level", "pinned", "rank"])
    entries = merged_loaded(states)
    for e in entries:
        loaded.add_metric([model, e["name"], e["level"], str(e["pinned"]).lower(),
                           "" if e["rank"] is None else str(e["rank"])], 1)
    yield loaded
    if not states:
        return
    counts = {"vllm:num_gpu_loaded_lora_adapters": ("LoRA adapters in GPU slots.",
                                                   sum(e["level"] == "gpu" for e in entries)),
              "vllm:num_cpu_loaded_lora_adapters": ("LoRA adapters in host memory and in no GPU slot.",
                                                   sum(s.get("cpu_total", 0) for s in states)),
              "vllm:max_gpu_lora_adapters": ("GPU slots for LoRA adapters.", sum(s["max_lora"] for s in states))}
    for name, (doc, value) in counts.items():
        family = GaugeMetricFamily(name, doc, labels=["model_name"])
        family.add_metric([model], value)
        yield family


def metrics_registry(directory: str):
    """What SGLang serves on ``/metrics`` (its processes' prometheus_client files in ``directory``)
    plus ``LoraInfoCollector``: a fresh registry to mount in its place."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(LoraInfoCollector(directory))
    return registry
