"""BodyLimit: a request body within --mint-max-request-bytes (frontend/body_limit.py), at the ASGI level. A real
server: tests/sglang/test_request_bodies.py."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI, Request

from sglang_mint.frontend.admin_guard import ADMITTED
from sglang_mint.frontend.body_limit import BodyLimit

LIMIT = 1000


def app_with_limit(admitted: bool = False):
    app = FastAPI()
    read = []

    @app.post("/echo")
    async def echo(request: Request):
        body = await request.body()
        read.append(len(body))
        return {"bytes": len(body)}

    limited = BodyLimit(app, limit=LIMIT)

    async def outer(scope, receive, send):  # as the admin guard marks an admitted admin call
        if admitted and scope["type"] == "http":
            scope[ADMITTED] = "loopback"
        await limited(scope, receive, send)

    return outer, read


def post(app, content) -> httpx.Response:
    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/echo", content=content)

    return asyncio.run(go())


def chunks(total: int, size: int = 100):
    async def stream():
        for start in range(0, total, size):
            yield b"x" * min(size, total - start)

    return stream()


def test_a_body_declared_past_the_limit_is_refused_before_it_is_read():
    app, read = app_with_limit()
    answer = post(app, b"x" * (LIMIT + 1))
    assert answer.status_code == 413 and "--mint-max-request-bytes" in answer.json()["error"]["message"]
    assert "1001 bytes" in answer.json()["error"]["message"] and read == []
    assert post(app, b"x" * LIMIT).json() == {"bytes": LIMIT} and read == [LIMIT]  # the limit itself is served


def test_a_chunked_body_is_refused_once_the_bytes_read_pass_the_limit():
    app, read = app_with_limit()
    answer = post(app, chunks(5 * LIMIT))
    assert answer.status_code == 413 and f"over {LIMIT} bytes" in answer.json()["error"]["message"], answer.text
    assert read == []  # the route saw the client gone, and its answer was dropped
    assert post(app, chunks(LIMIT)).json() == {"bytes": LIMIT}


def test_an_admitted_admin_call_is_not_bounded():
    app, read = app_with_limit(admitted=True)
    assert post(app, b"x" * (3 * LIMIT)).json() == {"bytes": 3 * LIMIT}
    assert post(app, chunks(3 * LIMIT)).json() == {"bytes": 3 * LIMIT}


def test_the_declared_length_is_read_from_the_headers():
    from sglang_mint.catalog.upload_stream import declared_length

    def of(headers):
        return declared_length(Request({"type": "http", "headers": headers}))

    assert of([(b"host", b"x"), (b"content-length", b"42")]) == 42
    assert of([(b"content-length", b"-1")]) is None
    assert of([]) is None
    assert of([(b"content-length", b"9" * 5000)]) is None  # int() refuses past 4,300 digits: no 500


def test_a_body_longer_than_it_declares_is_counted_too():
    """A small Content-Length on a chunked body: uvicorn's h11 reads it as chunked, past the length."""
    app, read = app_with_limit()
    parts = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3 + [
        {"type": "http.request", "body": b"", "more_body": False}]
    sent = []

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/echo", "raw_path": b"/echo", "query_string": b"",
             "root_path": "", "scheme": "http", "server": ("test", 80), "client": ("127.0.0.1", 1),
             "http_version": "1.1", "headers": [(b"content-length", b"10"), (b"transfer-encoding", b"chunked")]}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 413 and read == []
    assert (b"connection", b"close") in sent[0]["headers"]  # the rest of the body is not read
