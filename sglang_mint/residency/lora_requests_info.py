"""Which adapters an engine holds, in vLLM's ``vllm:lora_requests_info`` gauge, for llm-d's LoRA affinity.

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

    {"time": 1764500000.1, "max_lora": 8, "running": ["acme/bot"], "waiting": ["acme/new"]}
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


def engine_state(max_lora: int, running: Iterable[str | None], waiting_ids: Iterable[str]) -> dict:
    """One scheduler's state file: ``running`` names its pool slots' adapters (None: the base
    model's slot or an empty one), ``waiting_ids`` the catalog LoRA ids read or queued, in order;
    e.g. running [None, "acme/bot"] and waiting ["mint:acme/new@1", "mint:acme/new@2"] give
    running ["acme/bot"] and waiting ["acme/new"]."""
    waiting = []
    for lora_id in waiting_ids:
        if len(waiting) == MAX_WAITING_NAMES:
            break
        waiting.append(parse_lora_id(lora_id)[0])
    return {"time": time.time(), "max_lora": max_lora,
            "running": sorted({n for n in running if n}), "waiting": list(dict.fromkeys(waiting))}


def write_state(path: str, state: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(state, f)
    os.replace(tmp, path)  # a scrape reads the old state or the new one, never half


class LoraInfoWriter:
    """One scheduler's side: ``refresh()`` on every loop iteration, a file write only on a change.
    ``manager`` is the engine's LoRA manager (its ``memory_pool.buffer_id_to_uid``, ``lora_refs``)."""

    def __init__(self, path: str, max_lora: int, manager, residency):
        self.path = path
        self.max_lora = max_lora
        self.manager = manager
        self.residency = residency
        self._last = None

    def refresh(self) -> None:
        pool = self.manager.memory_pool
        if pool is None:
            return
        r = self.residency
        # Cheap to compare every iteration: the pool's slots (max_loras_per_batch of them) and counters
        # that move whenever a read is queued, started, installed or failed.
        key = (tuple(pool.buffer_id_to_uid), len(r.wanted), len(r.reading), r.read_seq, r.installed_total,
               r.loader.failed_total)
        if key == self._last:
            return
        self._last = key
        running = [adapter_name(uid, self.manager.lora_refs) for uid in pool.buffer_id_to_uid]
        write_state(self.path, engine_state(self.max_lora, running, itertools.chain(r.reading, r.wanted)))


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


class LoraInfoCollector:
    """A prometheus_client collector for the HTTP process's ``/metrics`` registry."""

    def __init__(self, directory: str):
        self.directory = directory

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily

        merged = merged_labels(read_states(self.directory))
        family = GaugeMetricFamily(METRIC, "Running stats on LoRA requests: the adapters this engine holds.",
                                   labels=["max_lora", "running_lora_adapters", "waiting_lora_adapters"])
        if merged is not None:
            labels, value = merged
            family.add_metric([labels["max_lora"], labels["running_lora_adapters"],
                               labels["waiting_lora_adapters"]], value)
        yield family


def metrics_registry(directory: str):
    """What SGLang serves on ``/metrics`` (its processes' prometheus_client files in ``directory``)
    plus ``LoraInfoCollector``: a fresh registry to mount in its place."""
    from prometheus_client import CollectorRegistry, multiprocess

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    registry.register(LoraInfoCollector(directory))
    return registry
