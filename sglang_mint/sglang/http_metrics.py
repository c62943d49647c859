"""SGLang's HTTP metrics, labelled from a fixed set of values (the rule: ``frontend/metric_labels.py``)."""

from __future__ import annotations

from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.metric_labels import KnownMethodsOnly, endpoint_label


def install(app) -> None:
    """Refuse the methods HTTP does not define before SGLang's metrics middleware counts them; called once,
    before the server starts, after SGLang added that middleware (so this layer is outside it)."""
    app.add_middleware(KnownMethodsOnly)


def _after_get_fastapi_request_path(result, request, *args, **kwargs):
    """sglang.srt.observability.http_request_metrics._get_fastapi_request_path AFTER: a path no route serves
    is labelled ``unmatched`` on a server with ``--enable-mint`` (its app is guarded)."""
    path, handled = result
    if handled or not admin_guard.is_guarded(request.app):
        return result
    return endpoint_label(path, handled), handled
