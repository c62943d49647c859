"""Whether SGLang serves metrics (``--enable-metrics``); the instruments are residency/metrics.py."""

from __future__ import annotations


def metrics_enabled() -> bool:
    from sglang.srt.runtime_context import get_observability

    return bool(get_observability().enable_metrics)
