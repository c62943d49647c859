"""Bad input to the ``/mint/*`` endpoints is a 400 in OpenAI's error shape, never a 500.

Played at the ASGI level on a FastAPI app with the routes and the admin guard
(no admin key: a loopback peer is admitted), and a catalog stand-in every
request is refused before it reaches.
"""

from __future__ import annotations

import asyncio
import json
import os
from types import SimpleNamespace

import httpx
from fastapi import FastAPI

from sglang_mint.catalog.upload_stream import declared_length
from sglang_mint.config import MintConfig
from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.mint_api import add_routes

DEEP_JSON = b"[" * 40000  # past Python's recursion limit: json.loads raises RecursionError, no ValueError
BOUNDARY = "b0undary"


def mint_app(tmp_path, with_catalog: bool = True):
    catalog = SimpleNamespace(views=str(tmp_path / "views"))  # upload_folder's only question
    names = SimpleNamespace(catalog=catalog, staged=None) if with_catalog else None
    engine = SimpleNamespace(names=names, config=MintConfig(), max_lora_rank=8, warm=lambda name: None)
    app = FastAPI()
    add_routes(app, lambda: engine, mark_admin=lambda handler: handler)
    admin_guard.install(app, None, marked_paths=lambda _app: set())
    return admin_guard.RecordPeer(app)


def call(app, method: str, path: str, body: bytes = b"", content_type: str = "application/json") -> httpx.Response:
    return call_with(app, method, path, body, {"content-type": content_type})


def call_with(app, method: str, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async def go():
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 40123))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:30000") as client:
            return await client.request(method, path, content=body, headers=headers)

    return asyncio.run(go())


def publish(app, **fields: bytes) -> httpx.Response:
    parts = [(b'Content-Disposition: form-data; name="files"; filename="adapter_config.json"', b"{}")]
    parts += [(f'Content-Disposition: form-data; name="{name}"'.encode(), value) for name, value in fields.items()]
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts)
    return call(app, "POST", "/mint/adapters/acme/bot/revisions", body + f"--{BOUNDARY}--\r\n".encode(),
                f"multipart/form-data; boundary={BOUNDARY}")


def assert_refused(response: httpx.Response, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == status and error["type"] == "invalid_request_error"
    for word in words:
        assert word in error["message"], error["message"]


def test_an_expected_revision_of_non_ascii_digits_is_a_400(tmp_path):
    app = mint_app(tmp_path)
    for value in ("²", "١٢", "0", "-3", "3.0", " 3"):  # "²".isdigit() and "١٢".isdigit() are True
        assert_refused(publish(app, expected_revision=value.encode()), 400, "expected_revision", repr(value))


def test_json_nested_past_the_recursion_limit_is_a_400(tmp_path):
    app = mint_app(tmp_path)
    assert_refused(call(app, "POST", "/mint/prefetch", DEEP_JSON), 400, "adapters")
    assert_refused(call(app, "POST", "/mint/adapters/acme/bot/rollback", DEEP_JSON), 400, "to")
    assert_refused(publish(app, metadata=DEEP_JSON), 400, "metadata is not valid JSON", "deep")


def test_the_inbox_without_a_catalog_is_a_400(tmp_path):
    assert_refused(call(mint_app(tmp_path, with_catalog=False), "GET", "/mint/inbox"), 400,
                   "/mint/inbox needs a catalog", "--mint-catalog")


def test_an_expected_revision_of_thousands_of_digits_is_a_400(tmp_path):
    # int() refuses a string of more than 4,300 digits (ValueError); the message shows the start only
    response = publish(mint_app(tmp_path), expected_revision=b"9" * 5000)
    assert_refused(response, 400, "expected_revision", "'99999999")
    assert len(response.json()["error"]["message"]) < 300


def test_a_field_sent_twice_is_a_400(tmp_path):
    config = (b'Content-Disposition: form-data; name="files"; filename="adapter_config.json"', b"{}")
    first, second = ((b'Content-Disposition: form-data; name="expected_revision"', value) for value in (b"5", b"7"))
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + value + b"\r\n"
                    for head, value in (config, first, second)) + f"--{BOUNDARY}--\r\n".encode()
    response = call(mint_app(tmp_path), "POST", "/mint/adapters/acme/bot/revisions", body,
                    f"multipart/form-data; boundary={BOUNDARY}")
    assert_refused(response, 400, "field 'expected_revision' sent twice")


def test_a_content_length_of_thousands_of_digits_is_not_a_500(tmp_path):
    # int() refuses more than 4,300 digits. uvicorn's HTTP parsers refuse such a header before the app;
    # an ASGI server that passes it on gets a body read by counting, as one without a length.
    huge = {"content-length": "9" * 5000}
    assert declared_length(SimpleNamespace(headers=huge)) is None
    response = call_with(mint_app(tmp_path), "POST", "/mint/prefetch", b"[]", huge)
    assert_refused(response, 400, "adapters")


def test_a_chunked_upload_claiming_a_small_content_length_is_received_on_disk(tmp_path, monkeypatch):
    """uvicorn's HTTP parser (h11) reads a body sent with both ``Transfer-Encoding: chunked`` and
    ``Content-Length: 10`` as chunked, to its end, and passes both headers on. The upload was put in
    shared memory by its Content-Length, so a body of up to --mint-max-upload-bytes (4 GiB) went to
    RAM past SHM_UPLOAD_MAX_BYTES and its free-room check; it goes to the catalog's disk now."""
    import h11

    import sglang_mint.catalog.upload_stream as upload_stream
    import sglang_mint.frontend.staged_revisions as module
    from sglang_mint.frontend.staged_revisions import StagedRevisions

    server = h11.Connection(h11.SERVER)  # what uvicorn's h11 protocol is handed
    server.receive_data(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
                        b"14\r\n" + b"x" * 20 + b"\r\n0\r\n\r\n")
    request, data = server.next_event(), server.next_event()
    assert (b"content-length", b"10") in list(request.headers) and len(data.data) == 20

    monkeypatch.setattr(module, "SHM_UPLOAD_MAX_BYTES", 1000)
    staged = StagedRevisions(str(tmp_path / "shm" / "30000"))
    catalog = SimpleNamespace(views=str(tmp_path / "views"))
    engine = SimpleNamespace(names=SimpleNamespace(catalog=catalog, staged=staged), config=MintConfig(),
                             max_lora_rank=8, warm=lambda name: None)
    app = FastAPI()
    add_routes(app, lambda: engine, mark_admin=lambda handler: handler)
    admin_guard.install(app, None, marked_paths=lambda _app: set())
    received_in = []
    real_new_folder = upload_stream._new_folder
    monkeypatch.setattr(upload_stream, "_new_folder", lambda root: received_in.append(root) or real_new_folder(root))
    body = (f"--{BOUNDARY}\r\n".encode() + b'Content-Disposition: form-data; name="files"; '
            b'filename="adapter_model.safetensors"\r\n\r\n' + b"x" * 5000 + f"\r\n--{BOUNDARY}--\r\n".encode())
    call_with(admin_guard.RecordPeer(app), "POST", "/mint/adapters/acme/bot/revisions", body,
              {"content-type": f"multipart/form-data; boundary={BOUNDARY}", "content-length": "10",
               "transfer-encoding": "chunked"})
    assert received_in and not received_in[0].startswith(staged.root), received_in
    staged.close()


def test_a_write_that_finds_no_room_is_a_507_and_any_other_os_error_is_raised():
    """A catalog write past the upload (a blob, a view) that finds the disk full answers 507 naming the
    call and the file; the receiving of an upload names its folder itself (test_mint_api_catalog_input.py)."""
    import errno

    import pytest

    from sglang_mint.frontend.mint_api import _refusals

    request = SimpleNamespace(method="POST", url=SimpleNamespace(path="/mint/adapters/acme/bot/revisions"))

    def answer(exc: OSError):
        async def handler(request):
            raise exc

        return asyncio.run(_refusals(handler)(request))

    for code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        response = answer(OSError(code, os.strerror(code), "/catalog/blobs/tmp/ab12"))
        body = json.loads(response.body)["error"]
        assert (response.status_code, body["code"], body["type"]) == (507, 507, "server_error")
        assert body["message"].startswith("POST /mint/adapters/acme/bot/revisions: no room left to write to "
                                          f"/catalog/blobs/tmp/ab12 ({os.strerror(code)})"), body["message"]
    with pytest.raises(PermissionError):
        answer(PermissionError(errno.EACCES, "Permission denied", "/catalog/blobs"))
