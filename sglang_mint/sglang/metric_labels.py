"""SGLang's HTTP and tokenizer metrics, labelled from a fixed set of names and values where a request writes
them (the rules: ``frontend/metric_labels.py``)."""

from __future__ import annotations

from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.metric_labels import KnownMethodsOnly, check_custom_labels, endpoint_label


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


def refuse_unallowed_custom_labels(tm, obj) -> None:
    """A request whose ``custom_labels`` name a label the server does not allow is refused (a ValueError: 400).
    Called with mint on, inside generate_request, before the request is sent on; without ``--enable-metrics``
    SGLang never reads them."""
    custom_labels = getattr(obj, "custom_labels", None)  # an EmbeddingReqInput has none
    if tm.enable_metrics and custom_labels is not None:
        check_custom_labels(custom_labels, tm.server_args.tokenizer_metrics_allowed_custom_labels or ())
