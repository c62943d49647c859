"""Who may call the admin endpoints, at the ASGI level: no server, no sockets.

A request is an ASGI scope handed to the stack uvicorn runs: uvicorn's own
ProxyHeadersMiddleware (trusting every hop, as ``FORWARDED_ALLOW_IPS=*`` does in many
containers), SGLang's FastAPI app with its api-key middleware (``--api-key tenant``,
no ``--admin-api-key``), and what ``--enable-mint`` installs on them. The scope's
``client`` is the TCP peer, so a non-loopback address here is a caller on another
machine, with no traffic leaving loopback. The tokenizer manager is a stub that
records every call, so an admin request that gets through shows as a call.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import sys
from types import SimpleNamespace

import pytest

from sglang_mint.catalog import init_catalog
from sglang_mint.config import MintConfig

REMOTE = "203.0.113.7"  # TEST-NET-3: never routed; only ever written into a scope here
TENANT = {"authorization": "Bearer tenant"}  # --api-key tenant: every tenant holds it
FORWARDING = ({"x-forwarded-for": "127.0.0.1"}, {"forwarded": "for=127.0.0.1"}, {"x-real-ip": "127.0.0.1"})


class StubTokenizerManager:
    """Stands in for SGLang's tokenizer manager: every call it did not expect is recorded."""

    def __init__(self, server_args, frontend):
        self.server_args = server_args
        self._mint_frontend = frontend
        self.lora_registry = SimpleNamespace(num_registered_loras=0)
        self.calls: list[str] = []

    async def get_internal_state(self):
        self.calls.append("get_internal_state")
        return [{}]

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        self.calls.append(name)

        async def call(*args, **kwargs):
            return SimpleNamespace(success=True, message="", error_message="", loaded_adapters={})

        return call


DUMPER_ROUTE_EXPECTED: list[bool] = []  # stack's: whether SGLang's app was made with /dumper/{method}


@pytest.fixture(scope="module")
def stack(tiny_model, tiny_adapters, tmp_path_factory):
    """(the ASGI app as uvicorn serves it, the stub tokenizer manager)."""
    # SGLang then adds /dumper/{method} too, if this process has not imported http_server already
    DUMPER_ROUTE_EXPECTED.append("sglang.srt.entrypoints.http_server" not in sys.modules)
    os.environ.setdefault("DUMPER_SERVER_PORT", "reuse")
    import uvicorn
    from sglang.srt.entrypoints import http_server
    from sglang.srt.plugins.hook_registry import HookRegistry, HookType
    from sglang.srt.utils.auth import add_api_key_middleware

    from sglang_mint.sglang import endpoints, flags, hooks

    root = tmp_path_factory.mktemp("guard") / "catalog"
    with init_catalog(str(root), str(tiny_model)) as cat:
        cat.publish("acme/bot", str(next(iter(tiny_adapters.values()))))
    config = MintConfig(catalog=str(root))
    server_args = SimpleNamespace(_mint=config, api_key="tenant", admin_api_key=None)
    enabled = flags.metrics_enabled
    flags.metrics_enabled = lambda: False  # no SGLang runtime context in this process
    try:
        from sglang_mint.sglang.frontend import CatalogFrontend

        tm = StubTokenizerManager(server_args, CatalogFrontend(config, port=0))
    finally:
        flags.metrics_enabled = enabled
    http_server._global_state = SimpleNamespace(tokenizer_manager=tm)

    # What the server does, in its order: the plugin's hooks outside SGLang's own code (uvicorn),
    # launch_server's BEFORE hook, then SGLang's api-key middleware, then uvicorn's Config.load.
    for hook in hooks.HOOKS:
        if hook.target.startswith("uvicorn."):
            module, name = hook.function.split(":")
            function = getattr(importlib.import_module(f"sglang_mint.sglang.{module}"), name)
            HookRegistry.register(hook.target, function, HookType[hook.kind])
    HookRegistry.apply_hooks()
    keep_alive = os.environ.get("SGLANG_TIMEOUT_KEEP_ALIVE")  # the hook sets it for the launcher's uvicorn
    endpoints._before_launch_server(server_args)
    assert os.environ["SGLANG_TIMEOUT_KEEP_ALIVE"] == (keep_alive or str(endpoints.IDLE_CONNECTION_S))
    if keep_alive is None:  # servers this process starts later keep their own default
        del os.environ["SGLANG_TIMEOUT_KEEP_ALIVE"]
    add_api_key_middleware(http_server.app, api_key="tenant", admin_api_key=None)
    served = uvicorn.Config(http_server.app, proxy_headers=True, forwarded_allow_ips="*", lifespan="off")
    served.load()
    return served.loaded_app, tm


def request(app, method: str, path: str, peer: str, headers: dict | None = None, body: dict | None = None,
            local: str = "127.0.0.1"):
    """(status, body text) of one request whose TCP peer is ``peer``, on a connection to ``local``."""
    raw = json.dumps(body).encode() if body is not None else b""
    head = {**TENANT, **(headers or {}), **({"content-type": "application/json"} if body is not None else {})}
    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": method, "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": [(k.encode(), v.encode()) for k, v in head.items()],
             "client": (peer, 40123), "server": (local, 30000), "state": {}}
    sent, pending = [], [{"type": "http.request", "body": raw, "more_body": False}]

    async def receive():
        if pending:
            return pending.pop()
        await asyncio.Event().wait()  # the client stays connected

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception as exc:  # noqa: BLE001 - a handler that crashed on the stub still got through
        return 500, f"{type(exc).__name__}: {exc}"
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    return status, b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body").decode()


def leaf_routes(routes):
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI's included routers (elastic EP, /v1/loads)
        if inner is not None:
            yield from leaf_routes(inner.routes)
        else:
            yield route


def admin_optional_calls(app) -> list[tuple[str, str]]:
    """(method, a concrete path) for every route SGLang or the plugin marks ADMIN_OPTIONAL."""
    from sglang.srt.utils.auth import AuthLevel

    calls = []
    for route in leaf_routes(app.router.routes):
        if getattr(getattr(route, "endpoint", None), "_auth_level", None) == AuthLevel.ADMIN_OPTIONAL:
            path = route.path.replace("{adapter_id:path}", "acme/bot").replace("{method}", "start")
            calls.extend((method, path) for method in sorted(route.methods))
    return calls


LOAD = {"lora_name": "acme/bot", "lora_path": "/nonexistent"}


def test_a_remote_peer_behind_a_trusting_proxy_cannot_claim_loopback(stack):
    app, tm = stack
    status, text = request(app, "GET", "/mint/adapters/acme/bot", REMOTE, {"x-forwarded-for": "127.0.0.1"})
    assert status == 403, text[:300]  # uvicorn rewrote the client to 127.0.0.1; the TCP peer is REMOTE


def test_every_admin_endpoint_refuses_a_remote_peer_that_claims_loopback(stack):
    from sglang.srt.entrypoints import http_server

    app, tm = stack
    calls = admin_optional_calls(http_server.app)
    assert ("POST", "/load_lora_adapter") in calls and ("POST", "/mint/prefetch") in calls and len(calls) > 60
    for method, path in calls:
        for headers in ({}, *FORWARDING):
            tm.calls.clear()
            status, text = request(app, method, path, REMOTE, headers, LOAD if method != "GET" else None)
            assert (status, tm.calls) == (403, []), (method, path, headers, text[:300])
            error = json.loads(text)["error"]
            assert error["type"] == "permission_error" and "--admin-api-key" in error["message"]
            assert REMOTE in error["message"] or "forward" in error["message"]


def test_a_loopback_peer_with_a_forwarding_header_is_not_loopback(stack):
    app, tm = stack
    for headers in FORWARDING:
        for method, path in (("GET", "/mint/adapters/acme/bot"), ("POST", "/load_lora_adapter"),
                             ("GET", "/mint/status"), ("POST", "/flush_cache")):
            tm.calls.clear()
            status, text = request(app, method, path, "127.0.0.1", headers, LOAD if method == "POST" else None)
            assert (status, tm.calls) == (403, []), (method, path, headers, text[:300])
            assert next(iter(headers)) in json.loads(text)["error"]["message"]


def test_a_loopback_peer_without_forwarding_headers_is_admin(stack):
    app, tm = stack
    status, text = request(app, "GET", "/mint/adapters/acme/bot", "127.0.0.1")
    assert status == 200 and json.loads(text)["current"] == 1, text[:300]
    tm.calls.clear()
    assert request(app, "POST", "/flush_cache", "::1")[0] == 200 and tm.calls == ["flush_cache"]
    status, text = request(app, "GET", "/mint/status", "127.0.0.1")
    assert status == 200 and "schedulers" in json.loads(text), text[:300]
    # --host 10.0.0.5: this machine calling its own address has it at both ends (SGLang's /freeze_gc)
    tm.calls.clear()
    assert request(app, "POST", "/freeze_gc", "10.0.0.5", local="10.0.0.5")[0] == 200 and tm.calls == ["freeze_gc"]
    assert request(app, "POST", "/freeze_gc", "10.0.0.6", local="10.0.0.5")[0] == 403


def test_the_tenant_key_alone_is_not_admin_and_other_endpoints_are_not_guarded(stack):
    app, tm = stack
    status, _ = request(app, "GET", "/openapi.json", REMOTE, {"x-forwarded-for": "198.51.100.1"})
    assert status == 200  # not an admin endpoint: the guard lets it through
    status, _ = request(app, "GET", "/mint/status", "127.0.0.1", {"authorization": "Bearer wrong"})
    assert status == 401  # SGLang's api-key middleware still runs first


def test_the_list_is_exactly_the_endpoints_sglang_and_the_plugin_mark_admin(stack):
    from sglang.srt.entrypoints import http_server

    from sglang_mint.sglang import admin

    assert len(admin.ADMIN_ENDPOINTS) == len(set(admin.ADMIN_ENDPOINTS))
    dumper = set() if DUMPER_ROUTE_EXPECTED[0] else {"/dumper/{method}"}  # imported by an earlier test: no route
    assert admin.admin_optional_paths(http_server.app) == set(admin.ADMIN_ENDPOINTS) - dumper


def test_without_enable_mint_nothing_is_installed():
    import uvicorn
    from fastapi import FastAPI
    from sglang.srt.entrypoints import http_server

    from sglang_mint.sglang import admin, endpoints

    app = http_server.app
    before = (list(app.user_middleware), len(app.router.routes), dict(app.exception_handlers))
    endpoints._before_launch_server(SimpleNamespace(admin_api_key=None, api_key=None))  # no _mint: stock
    assert (list(app.user_middleware), len(app.router.routes), dict(app.exception_handlers)) == before
    config = uvicorn.Config(FastAPI(), lifespan="off")
    config.load()
    loaded = config.loaded_app
    admin._after_uvicorn_config_load(None, config)
    assert config.loaded_app is loaded  # an app the guard is not installed on: uvicorn's stack as it was


def raw_handshake(app, headers: dict) -> tuple[list[dict], str | None]:
    """(what the app sent, the error it raised) for a WebSocket handshake to SGLang's /v1/realtime."""
    scope = {"type": "websocket", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "scheme": "ws", "path": "/v1/realtime", "raw_path": b"/v1/realtime", "query_string": b"",
             "root_path": "", "headers": [(k.encode(), v.encode()) for k, v in headers.items()],
             "client": ("127.0.0.1", 40123), "server": ("127.0.0.1", 30000), "subprotocols": [], "state": {}}
    sent, pending = [], [{"type": "websocket.connect"}]

    async def receive():
        if pending:
            return pending.pop()
        await asyncio.Event().wait()

    async def send(message):
        sent.append(message)

    try:
        asyncio.run(app(scope, receive, send))
    except Exception as exc:  # noqa: BLE001 - the route itself, on the stub's app state
        return sent, f"{type(exc).__name__}: {exc}"
    return sent, None


def test_a_websocket_handshake_needs_the_key_sglang_s_middleware_checks_only_on_http(stack):
    """SGLang's API-key middleware passes WebSocket scopes through: its /v1/realtime was reached with no key."""
    app, _ = stack
    sent, error = raw_handshake(app, {})
    assert error is None and [m["type"] for m in sent] == ["websocket.close"] and sent[0]["code"] == 1008, sent
    sent, error = raw_handshake(app, TENANT)  # past the check: the route runs (on this stub, without its state)
    assert error is not None and "openai_serving_transcription" in error, (sent, error)
