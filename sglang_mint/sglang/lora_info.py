"""vLLM's ``vllm:lora_requests_info`` gauge for llm-d, SGLang's side (residency/lora_requests_info.py has the rest).

Each scheduler's ``LoraInfoWriter`` reads SGLang's LoRA pool, and the HTTP
process's ``/metrics`` gets a registry that also holds ``LoraInfoCollector``.
"""

from __future__ import annotations

import itertools
import os
import re

from sglang_mint.residency.lora_requests_info import adapter_name, engine_state, metrics_registry, write_state


class LoraInfoWriter:
    """One scheduler's side: ``refresh()`` on every loop iteration, a file write only on a change."""

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


# -- hooks -----------------------------------------------------------------------
def _after_add_prometheus_middleware(result, app, *args, **kwargs):
    """Serve ``/metrics`` from a registry that also holds ``LoraInfoCollector``.

    SGLang's ``add_prometheus_middleware`` mounts ``make_asgi_app`` over a fresh registry with
    its multiprocess collector; we mount the same plus ours in its place."""
    from prometheus_client import make_asgi_app
    from starlette.routing import Mount

    from sglang_mint.sglang.flags import mint_config

    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    # SGLang sets app.server_args in single-tokenizer mode, the only one --enable-mint allows.
    if directory is None or mint_config(getattr(app, "server_args", None)) is None:
        return result
    registry = metrics_registry(directory)
    for i, route in enumerate(app.routes):
        if isinstance(route, Mount) and route.path == "/metrics":
            mount = Mount("/metrics", make_asgi_app(registry=registry))
            mount.path_regex = re.compile("^/metrics(?P<path>.*)$")  # as SGLang's: no 307 for /metrics
            app.routes[i] = mount
    return result
