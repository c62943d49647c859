"""The values a request can give SGLang's HTTP metrics' labels: a fixed set, whatever a client sends.

With ``--enable-metrics`` SGLang counts every HTTP request in ``sglang:http_requests_total``,
``sglang:http_responses_total`` and ``sglang:http_requests_active``, labelled with its ``endpoint``
(the template of the route that serves it, or the raw URL path where no route does) and its
``method`` (as sent: uvicorn's h11 parser takes any token). Each new value is a new series that the
process keeps until it stops, so a client inventing a path or a method per request grew the server's
memory and every scrape without bound, three series per invented path. With ``--enable-mint``:

- ``endpoint_label``: a path no route serves is counted as ``unmatched``;
- ``KnownMethodsOnly``: a method HTTP does not define is refused, 501 (RFC 9110: the server does not
  recognize it), before any middleware counts it. No route of SGLang's or the plugin's takes one.

SGLang's tokenizer metrics also label each request's series with the body's ``custom_labels``
(``/generate``; the OpenAI routes take them from ``--tokenizer-metrics-custom-labels-header``, keeping
only the allowed names). A name the series were not made with raised inside the loop that reads every
answer, which stopped the whole server; ``model_name`` took any value, a new series in every tokenizer
metric per value. ``check_custom_labels``: a request may name only the labels the server was started
to allow (``--tokenizer-metrics-allowed-custom-labels``); their values are the operator's choice to
take from clients, and each distinct one is a series.
"""

from __future__ import annotations

from sglang_mint.frontend.admin_guard import answer_error

UNMATCHED_ENDPOINT = "unmatched"
# RFC 9110's methods and RFC 5789's PATCH: every method a route can be declared with
HTTP_METHODS = frozenset(("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"))


def endpoint_label(path: str, handled: bool) -> str:
    """The ``endpoint`` label of a request: its route's template, or ``unmatched`` where no route serves it."""
    return path if handled else UNMATCHED_ENDPOINT


class KnownMethodsOnly:
    """An ASGI layer: a request whose method is not one of ``HTTP_METHODS`` is answered 501, in
    OpenAI's error shape, before the layers inside it (SGLang's HTTP metrics among them) see it."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in HTTP_METHODS:
            return await self.app(scope, receive, send)
        method = scope["method"][:64]
        await answer_error(scope, receive, send, 501, "invalid_request_error",
                           f"HTTP method {method!r} is not one this server implements; use one of "
                           f"{', '.join(sorted(HTTP_METHODS))}")


def check_custom_labels(custom_labels, allowed) -> None:
    """Raise ValueError (a 400) naming the first of a request's ``custom_labels`` that is not one of
    ``allowed``, the label names the server was started to take from a request."""
    if not isinstance(custom_labels, dict):
        raise ValueError(f"custom_labels must be an object of label names to values, not {type(custom_labels).__name__}")
    for name in custom_labels:
        if name not in allowed:
            shown = name[:64] if isinstance(name, str) else name
            offer = f"one of {', '.join(sorted(allowed))}" if allowed else "none: the server allows no custom label"
            raise ValueError(f"custom_labels: {shown!r} is not a label this server takes from a request ({offer}; "
                             "the operator allows them with --tokenizer-metrics-allowed-custom-labels)")
