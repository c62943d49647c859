"""Whether SGLang serves metrics (``--enable-metrics``); the instruments are residency/metrics.py."""

from __future__ import annotations

from sglang_mint.residency.metrics import FrontendMetrics  # noqa: F401  (frontend.py imports it from here)


def metrics_enabled() -> bool:
    from sglang.srt.runtime_context import get_observability

    return bool(get_observability().enable_metrics)
