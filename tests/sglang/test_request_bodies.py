"""A request body within --mint-max-request-bytes (frontend/body_limit.py), end to end.

SGLang reads a request's whole body into memory before its route looks at it, and nothing bounds its size.
The shared ``mint_server`` has the default limit, 64 MiB.
"""

from __future__ import annotations

import http.client
import json

import pytest
from json_calls import post_json

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

LIMIT = 64 << 20


def send(server, path: str, *, declared: int | None = None, body: bytes = b"", chunk: int = 1 << 20,
         chunked: bool | None = None):
    """(status, answer) of a POST of ``body`` to ``path``: with a Content-Length of ``declared`` (sending only
    ``body``), or chunked without one; ``chunked`` with one too."""
    chunked = declared is None if chunked is None else chunked
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    try:
        connection.putrequest("POST", path)
        connection.putheader("Content-Type", "application/json")
        if declared is not None:
            connection.putheader("Content-Length", str(declared))
        if chunked:
            connection.putheader("Transfer-Encoding", "chunked")
        connection.endheaders()
        try:
            if chunked:
                for start in range(0, len(body), chunk):
                    part = body[start:start + chunk]
                    connection.send(f"{len(part):x}\r\n".encode() + part + b"\r\n")
                connection.send(b"0\r\n\r\n")
            else:
                connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed before the whole body went
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def test_a_body_declared_past_the_limit_is_refused_before_it_is_read(mint_server):
    code, text = send(mint_server, "/generate", declared=10**12)  # a terabyte, never sent
    assert code == 413 and "--mint-max-request-bytes" in text and str(10**12) in text, (code, text)
    code, text = post_json(mint_server, "/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 2}})
    assert code == 200, text  # the server goes on


def test_a_chunked_body_is_refused_once_past_the_limit(mint_server):
    code, text = send(mint_server, "/v1/chat/completions", body=b"x" * (LIMIT + (1 << 20)))
    assert code == 413 and "--mint-max-request-bytes" in text, (code, text[:300])
    body = json.dumps({"model": "tiny", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2})
    code, text = send(mint_server, "/v1/chat/completions", body=body.encode())  # chunked within it: served
    assert code == 200, text


def test_a_small_length_on_a_chunked_body_is_no_way_past(mint_server):
    """uvicorn's h11 reads a body that declares both a Content-Length and chunked as chunked."""
    code, text = send(mint_server, "/generate", declared=10, chunked=True, body=b"x" * (LIMIT + (1 << 20)))
    assert code == 413 and "--mint-max-request-bytes" in text, (code, text[:300])


def test_an_admin_call_is_not_bounded(mint_server):
    """The admin guard admits a loopback caller here (no --admin-api-key): SGLang's route reads the body."""
    body = json.dumps({"lora_name": "big", "lora_path": "/nonexistent/adapter", "pad": "x" * LIMIT}).encode()
    code, text = send(mint_server, "/load_lora_adapter", declared=len(body), body=body)
    assert code != 413 and "--mint-max-request-bytes" not in text, (code, text[:300])
