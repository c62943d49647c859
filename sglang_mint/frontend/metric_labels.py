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
