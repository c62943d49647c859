"""With an admin API key the guard checks ``Authorization: Bearer K`` itself, on every admin path.

The engine's own api-key middleware decides "admin" from its route marks, and a
route added through ``include_router`` (SGLang's ``/scale_elastic_ep``) can escape
them; here no engine middleware runs at all, so whatever the guard lets through
reaches the handler. Played at the ASGI level: no server, a TCP peer per request.
"""

from __future__ import annotations

import asyncio

import httpx
from fastapi import APIRouter, FastAPI, Request
from starlette.middleware import Middleware

from sglang_mint.frontend import admin_guard

ADMIN_KEY = "admin-key-7f3a"
REMOTE = ("203.0.113.7", 40123)
LOOPBACK = ("127.0.0.1", 40123)


def guarded_app(reached: list[str]):
    """An app whose admin route comes through include_router, guarded with ADMIN_KEY; nothing
    marks it admin but the guard's own list (ADMIN_ENDPOINTS holds /scale_elastic_ep)."""
    app = FastAPI()
    router = APIRouter()

    @router.post("/scale_elastic_ep")
    async def scale_elastic_ep():
        reached.append("/scale_elastic_ep")
        return {"ok": True}

    app.include_router(router)

    @app.post("/v1/completions")
    async def completions():
        reached.append("/v1/completions")
        return {"ok": True}

    admin_guard.install(app, ADMIN_KEY, marked_paths=lambda _app: set())
    return admin_guard.RecordPeer(app)


def post(app, path: str, peer: tuple[str, int], headers: dict[str, str]) -> httpx.Response:
    async def call():
        transport = httpx.ASGITransport(app=app, client=peer)
        async with httpx.AsyncClient(transport=transport, base_url="http://10.0.0.5:30000") as client:
            return await client.post(path, headers=headers)

    return asyncio.run(call())


def test_an_included_admin_route_needs_the_admin_key_from_every_peer():
    reached: list[str] = []
    app = guarded_app(reached)
    for peer in (REMOTE, LOOPBACK):
        for headers in ({}, {"Authorization": "Bearer tenant"}, {"Authorization": f"Bearer {ADMIN_KEY}x"},
                        {"Authorization": f"Basic {ADMIN_KEY}"}, {"Authorization": ADMIN_KEY}):
            response = post(app, "/scale_elastic_ep", peer, headers)
            assert response.status_code == 401, (peer, headers, response.text)
            error = response.json()["error"]
            assert error["code"] == 401 and error["type"] == "authentication_error"
            assert "/scale_elastic_ep" in error["message"] and "--admin-api-key" in error["message"]
    assert reached == []


def test_the_admin_key_admits_and_other_routes_are_left_to_the_engine():
    reached: list[str] = []
    app = guarded_app(reached)
    for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, {"Authorization": f"bearer {ADMIN_KEY}"}):
        assert post(app, "/scale_elastic_ep", REMOTE, headers).status_code == 200
    assert post(app, "/v1/completions", REMOTE, {}).status_code == 200  # not admin: the engine's to check
    assert reached == ["/scale_elastic_ep", "/scale_elastic_ep", "/v1/completions"]


def test_code_an_admitted_admin_call_runs_knows_it_and_no_other_code_does():
    """``ADMIN_CALL`` tells code without the request's scope (sglang/client_rids.py: an admin's
    /abort_request keeps SGLang's meaning) how the call being answered was admitted; not the request
    uvicorn starts next on the same connection, from inside this one's last ``send``."""
    seen: list[tuple[str, str | None]] = []
    app = FastAPI()

    @app.post("/abort_request")
    async def abort_request(request: Request):
        await request.body()
        seen.append(("/abort_request", admin_guard.ADMIN_CALL.get()))

    @app.post("/v1/completions")
    async def completions(request: Request):
        await request.body()
        seen.append(("/v1/completions", admin_guard.ADMIN_CALL.get()))

    def next_request_started_in_send(inner):
        """As uvicorn's h11 protocol: the response's last message starts the connection's next request, and
        a read resumed by ``receive`` (asyncio's loop) starts the one after in its context."""
        async def asgi(scope, receive, send):
            async def receive_and_resume_reading():
                started.append(asyncio.create_task(next_request("resumed")))
                return await receive()

            async def send_and_start_next(message):
                await send(message)
                if message["type"] == "http.response.body" and not message.get("more_body"):
                    started.append(asyncio.create_task(next_request("next")))
            await inner(scope, receive_and_resume_reading, send_and_start_next)
        return asgi

    async def next_request(how: str):
        seen.append((how, admin_guard.ADMIN_CALL.get()))

    for key, peer, admitted in ((None, LOOPBACK, "loopback"), (ADMIN_KEY, REMOTE, "admin-api-key")):
        seen.clear()
        started: list[asyncio.Task] = []
        guarded = FastAPI()
        guarded.router.routes.extend(app.router.routes)
        admin_guard.install(guarded, key, marked_paths=lambda _app: set())
        headers = {"Authorization": f"Bearer {ADMIN_KEY}"} if key else {}

        async def calls():
            transport = httpx.ASGITransport(app=admin_guard.RecordPeer(guarded), client=peer)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:30000") as client:
                for path in ("/abort_request", "/v1/completions"):
                    assert (await client.post(path, headers=headers)).status_code == 200
                    assert admin_guard.ADMIN_CALL.get() is None  # reset once the call is answered
            await asyncio.gather(*started)

        guarded.user_middleware.insert(0, Middleware(next_request_started_in_send))  # outside the guard
        asyncio.run(calls())
        assert [(how, value) for how, value in seen if how.startswith("/")] == [("/abort_request", admitted),
                                                                              ("/v1/completions", None)]
        started_there = [(how, value) for how, value in seen if not how.startswith("/")]
        assert {how for how, _ in started_there} == {"next", "resumed"}
        assert all(value is None for _, value in started_there), started_there
