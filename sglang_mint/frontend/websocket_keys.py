"""A WebSocket handshake carries the server's key, as every HTTP request does.

SGLang's API-key middleware checks HTTP requests only and passes every other ASGI scope through, so
with ``--api-key`` set, its one WebSocket route, ``/v1/realtime`` (realtime
transcription on a model with a streaming transcription adapter, once uvicorn has a WebSocket library),
answered callers that carried no key. ``WebSocketKeys`` refuses such a handshake before the route
sees it: the connection is closed with 1008 (policy violation), which the server answers as HTTP 403.
Either key is admitted, as on the tenants' HTTP routes with ``--enable-mint`` (``sglang/admin.py``); with
``--admin-api-key`` alone those routes answer everyone, and the plugin adds no check here either.
"""

from __future__ import annotations

from sglang_mint.frontend.admin_guard import carries_key

POLICY_VIOLATION = 1008  # RFC 6455: the close code for a message that violates the server's policy


def handshake_keys(api_key: str | None, admin_api_key: str | None) -> tuple[str, ...]:
    """The keys a handshake may carry: either key once ``--api-key`` is set; none is asked for without it, as
    SGLang's tenant routes (``AuthLevel.NORMAL``) then answer everyone, ``--admin-api-key`` or not."""
    return tuple(key for key in (api_key, admin_api_key) if key) if api_key else ()


class WebSocketKeys:
    """An ASGI layer: a WebSocket handshake without ``Authorization: Bearer K``, K one of ``keys``, is refused;
    with no key set every handshake passes, as SGLang's HTTP routes then answer everyone."""

    def __init__(self, app, keys: tuple[str | None, ...]):
        self.app = app
        self.keys = tuple(key for key in keys if key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "websocket" or not self.keys or any(carries_key(scope, key) for key in self.keys):
            return await self.app(scope, receive, send)
        await receive()  # the handshake's websocket.connect
        await send({"type": "websocket.close", "code": POLICY_VIOLATION,
                    "reason": "this server answers only requests carrying 'Authorization: Bearer KEY'"})
