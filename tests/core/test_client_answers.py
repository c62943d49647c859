"""MintClient reading a server's answer that is not what sglang-mint sends: a MintAPIError naming it.

A proxy's HTML page, a truncated body, JSON nested past the recursion limit or of another shape
raised ValueError, RecursionError, TypeError or AttributeError, which MintPublishCallback's
``raise_errors=False`` does not catch: one odd answer ended a training run. The server is a
loopback stub answering as each test says (tests/loopback_stub.py).
"""

from __future__ import annotations

import logging
import re
from types import SimpleNamespace

import pytest
from loopback_stub import loopback_stub

from sglang_mint.client import MintAPIError, MintClient

DEEP = b"[" * 40000  # past Python's recursion limit: json.loads raises RecursionError, no ValueError


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(b"{}")  # the stub reads nothing
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\0" * 16)
    return tmp_path


@pytest.mark.parametrize("status, body, words", [
    (200, b"<html>signed out</html>", ("200", "not JSON", "<html>signed out")),
    (200, DEEP, ("200", "not JSON")),
    (200, b"[1, 2]", ("200", "no adapter_id, revision and digest")),
    (201, b'{"adapter_id": "acme/bot"}', ("201", "has no revision and digest")),  # only what is missing
    (502, DEEP, ("502", "[[[[")),  # an error page nested too deep is shown as it came
])
def test_an_answer_publish_cannot_read_is_a_mint_api_error(folder, status, body, words):
    with loopback_stub(lambda method, path, data: (status, body)) as url:
        with pytest.raises(MintAPIError) as exc:
            MintClient(url, shared_memory=False).publish("acme/bot", str(folder))
    for word in words:
        assert word in str(exc.value), str(exc.value)
    assert len(str(exc.value)) < 2100


def test_an_inbox_answer_that_is_not_an_object_sends_the_files_in_the_body(folder):
    seen = []

    def answer(method, path, data):
        seen.append(path)
        if path == "/mint/inbox":
            return 200, b'["/dev/shm/x"]'
        return 201, {"adapter_id": "acme/bot", "revision": 2, "digest": "ab" * 32, "format": "peft"}

    with loopback_stub(answer) as url:
        assert MintClient(url).publish("acme/bot", str(folder)).revision == 2
    assert seen == ["/mint/inbox", "/mint/adapters/acme/bot/revisions"]


def test_a_callback_that_logs_failures_logs_an_unreadable_answer_and_training_goes_on(folder, caplog):
    from sglang_mint.client import MintPublishCallback

    with loopback_stub(lambda method, path, data: (200, b"<html>signed out</html>")) as url:
        callback = MintPublishCallback(MintClient(url, shared_memory=False), "rl/policy", every_n_steps=1,
                                       raise_errors=False)
        state = SimpleNamespace(is_world_process_zero=True, global_step=1, epoch=0.5)
        with caplog.at_level(logging.ERROR, logger="sglang_mint"):
            callback.on_step_end(SimpleNamespace(), state, SimpleNamespace(), model=str(folder))
    assert callback.published == []
    assert any("publishing rl/policy at step 1 failed" in r.getMessage() for r in caplog.records)


@pytest.fixture
def cut_short_server():
    """A loopback server that answers 201 with a Content-Length of 100 and sends 14 bytes, then closes."""
    import socket
    import threading

    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    data += chunk
                conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 100\r\n\r\n{\"adapter_id\":")

    threading.Thread(target=serve, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    listener.close()


def test_an_answer_cut_short_is_a_mint_api_error(cut_short_server):
    # http.client.IncompleteRead is neither an OSError nor a MintError: it ended a training run
    with pytest.raises(MintAPIError, match="cut short or garbled .*IncompleteRead"):
        MintClient(cut_short_server, shared_memory=False).adapter("acme/bot")


def test_metadata_the_server_would_refuse_is_named_before_anything_is_sent(folder):
    from sglang_mint.errors import MintError

    sent = []
    with loopback_stub(lambda method, path, data: sent.append(path) or (201, {})) as url:
        for metadata, words in (({"loss": float("nan")}, "metadata['loss']: nan is not a JSON number"),
                                ({"ids": {1, 2}}, "metadata['ids']: a set is not a JSON value")):
            with pytest.raises(MintError, match=re.escape(words)):
                MintClient(url, shared_memory=False).publish("acme/bot", str(folder), metadata=metadata)
    assert sent == []


@pytest.fixture
def closed_port_url():
    """http://127.0.0.1:PORT where nothing listens: a port the kernel handed out, then closed."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("shared_memory", [False, True])  # True: the inbox question goes first
def test_a_url_where_nothing_answers_is_a_mint_error_naming_it(closed_port_url, folder, shared_memory):
    """A bare ``URLError <urlopen error [Errno 111] Connection refused>`` named no URL."""
    import urllib.error

    from sglang_mint.client import MintUnreachable
    from sglang_mint.errors import MintError

    client = MintClient(closed_port_url, shared_memory=shared_memory)
    for call, request in ((lambda: client.publish("acme/bot", str(folder)), "POST /mint/adapters/acme/bot/revisions"),
                          (lambda: client.adapter("acme/bot"), "GET /mint/adapters/acme/bot")):
        with pytest.raises(MintUnreachable) as exc:
            call()
        assert isinstance(exc.value, MintError) and not isinstance(exc.value, MintAPIError)  # no server refused it
        message = str(exc.value)
        assert f"nothing answered at {closed_port_url}" in message and request in message, message
        assert "Connection refused" in message and "is the server running" in message, message
        assert isinstance(exc.value.__cause__, urllib.error.URLError), repr(exc.value.__cause__)
        assert isinstance(exc.value, ConnectionError)  # what a caller catching urllib's OSError still catches


def test_a_server_that_answers_before_reading_a_large_body_is_not_nothing_answering():
    """A server refusing an upload at once (401, 413, 429 by Content-Length) and closing: urllib breaks
    its pipe sending the body and cannot read the answer. Something answered: no MintUnreachable
    telling the caller the server is not running."""
    import socket
    import threading
    import urllib.error

    from sglang_mint.client import MintUnreachable

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def refuse_at_once():
            conn, _ = server.accept()
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    head += conn.recv(65536)
                body = b'{"error": {"message": "upload: the body is above the limit of 16 MiB"}}'
                conn.sendall(b"HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\nConnection: close"
                             b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

        threading.Thread(target=refuse_at_once, daemon=True).start()
        client = MintClient(f"http://127.0.0.1:{server.getsockname()[1]}", timeout=30)
        with pytest.raises((MintAPIError, urllib.error.URLError, OSError)) as exc:
            client._call("POST", "/mint/adapters/a/b/revisions", [b"x" * (8 << 20)] * 8,
                         "multipart/form-data; boundary=x")
    assert not isinstance(exc.value, MintUnreachable), exc.value
