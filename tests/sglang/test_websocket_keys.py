"""A WebSocket handshake carries the server's key with --enable-mint (frontend/websocket_keys.py), on an app
with SGLang's own API-key middleware, which checks HTTP requests only. Played at the ASGI level: uvicorn serves
WebSockets only with a WebSocket library installed, which this environment does not have."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, WebSocket
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from sglang_mint.frontend.websocket_keys import POLICY_VIOLATION, WebSocketKeys, handshake_keys

TENANT_KEY, ADMIN_KEY = "TENANT-KEY", "ADMIN-KEY"


def app_with_keys(guarded: bool, api_key: str | None = TENANT_KEY) -> FastAPI:
    from sglang.srt.utils.auth import add_api_key_middleware

    app = FastAPI()

    @app.websocket("/v1/realtime")  # where SGLang serves realtime transcription
    async def realtime(ws: WebSocket):
        await ws.accept()
        await ws.send_text("session.created")
        await ws.close()

    @app.get("/v1/models")
    async def models():
        return {"data": []}

    if guarded:
        app.add_middleware(WebSocketKeys, keys=handshake_keys(api_key, ADMIN_KEY))  # as the plugin adds it
    add_api_key_middleware(app, api_key=api_key, admin_api_key=ADMIN_KEY)  # as launch_server adds it, last
    return app


def handshake(app, key: str | None) -> str:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with TestClient(app).websocket_connect("/v1/realtime", headers=headers) as ws:
        return ws.receive_text()


def test_sglang_alone_answers_a_handshake_without_its_key_and_an_http_request_not():
    app = app_with_keys(guarded=False)
    assert handshake(app, None) == "session.created"
    assert TestClient(app).get("/v1/models").status_code == 401


@pytest.mark.parametrize("key", [None, "wrong"])
def test_a_handshake_without_the_key_is_refused(key):
    with pytest.raises(WebSocketDisconnect) as refused:
        handshake(app_with_keys(guarded=True), key)
    assert refused.value.code == POLICY_VIOLATION


@pytest.mark.parametrize("key", [TENANT_KEY, ADMIN_KEY])
def test_a_handshake_with_either_key_is_answered(key):
    assert handshake(app_with_keys(guarded=True), key) == "session.created"


def test_without_keys_every_handshake_passes():
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(ws: WebSocket):
        await ws.accept()
        await ws.send_text("hi")
        await ws.close()

    app.add_middleware(WebSocketKeys, keys=(None, None))
    with TestClient(app).websocket_connect("/ws") as conn:
        assert conn.receive_text() == "hi"


def test_with_the_admin_key_alone_a_handshake_needs_no_key_as_the_tenants_routes_need_none():
    app = app_with_keys(guarded=True, api_key=None)
    assert TestClient(app).get("/v1/models").status_code == 200  # SGLang: no --api-key, the tenants' routes open
    assert handshake(app, None) == "session.created"
    assert handshake_keys(None, ADMIN_KEY) == () and handshake_keys(TENANT_KEY, None) == (TENANT_KEY,)
