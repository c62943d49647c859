"""vLLM's ``vllm:lora_requests_info`` gauge for llm-d, SGLang's side (residency/lora_requests_info.py has the rest).

The HTTP process's ``/metrics`` gets a registry that also holds ``LoraInfoCollector``
(each scheduler's ``LoraInfoWriter`` is residency/lora_requests_info.py).
"""

from __future__ import annotations

import os
import re

from sglang_mint.residency.lora_requests_info import metrics_registry


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
