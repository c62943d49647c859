"""A request body within ``--mint-max-request-bytes``, whoever sends it.

SGLang's routes read a request's whole body into memory before they look at it (FastAPI's
``request.json()``, or a pydantic model built from it), and nothing bounds its size: uvicorn limits
headers, not bodies. One request of a few GB, valid JSON or not, grew the frontend by as much, then by
the objects parsed from it, and a few at once could take the frontend's memory (every tenant's server)
down. ``BodyLimit`` refuses a body past the limit with 413 in OpenAI's error shape: by its
``Content-Length`` before any route runs, or once the bytes read pass the limit (a chunked body; or one
that declares a small length and is chunked too, which uvicorn's h11 reads as chunked): the route then
sees the client gone, and its answer is dropped for the 413. The 413 closes the connection, so the rest
of the body is not read.

Admin calls the admin guard admitted (``admin_guard.ADMITTED``) are not bounded here: an adapter upload
has its own limit (``--mint-max-upload-bytes``, read in a stream), and a weight update from tensors is the
operator's.
"""

from __future__ import annotations

from starlette.requests import ClientDisconnect, Request

from sglang_mint.catalog.upload_stream import declared_length
from sglang_mint.frontend.admin_guard import ADMITTED, answer_error


async def refuse(scope, receive, send, limit: int, size: str) -> None:
    """413 in OpenAI's error shape, closing the connection."""
    await answer_error(scope, receive, send, 413, "invalid_request_error",
                       f"the request body is {size}, above this server's limit of {limit} bytes "
                       "(--mint-max-request-bytes); send less in one request", headers={"connection": "close"})


class BodyLimit:
    """An ASGI layer: a request body past ``limit`` bytes is answered 413, unless the request is an admitted
    admin call. Inside the admin guard, which marks those."""

    def __init__(self, app, *, limit: int):
        self.app = app
        self.limit = limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get(ADMITTED):
            return await self.app(scope, receive, send)
        declared = declared_length(Request(scope))  # None beside chunked: counted below either way
        if declared is not None and declared > self.limit:
            return await refuse(scope, receive, send, self.limit, f"{declared} bytes")
        await self._counted(scope, receive, send)

    async def _counted(self, scope, receive, send):
        """The body counted as the route reads it."""
        received, refused, started = 0, False, False

        async def counted_receive():
            nonlocal received, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    refused = True
                    if not started:
                        await refuse(scope, receive, send, self.limit, f"over {self.limit} bytes")
                    return {"type": "http.disconnect"}
            return message

        async def answer_unless_refused(message):
            nonlocal started
            if refused:
                return  # the 413 is the answer
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted_receive, answer_unless_refused)
        except ClientDisconnect:
            if not refused:
                raise  # the 413 answered a route that failed on the body cut off
