"""What a trainer leaves in the server's shared-memory inbox when a publish through it does not go through.

The inbox is RAM (/dev/shm) and the server takes a folder out of it only once the publish request
reaches its handler. A folder the server never took (the publish refused before: 401, 403, 429, a
bad id; or the files only half written, /dev/shm full) stayed there, the adapter's size of memory,
until the server stopped. The server is a loopback stub (tests/loopback_stub.py); the inbox a real
folder of this user.
"""

from __future__ import annotations

import errno
import socket

import pytest
from loopback_stub import loopback_stub

import sglang_mint.client.handoff as handoff
from sglang_mint.client import MintAPIError, MintClient

PUBLISHED = {"adapter_id": "acme/bot", "revision": 2, "digest": None, "format": "peft"}


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "adapter_config.json").write_bytes(b"{}")  # the stub reads nothing
    (tmp_path / "adapter_model.safetensors").write_bytes(b"\0" * 4096)
    return tmp_path


@pytest.fixture
def inbox(tmp_path):
    path = tmp_path / "inbox"
    path.mkdir(mode=0o700)
    return path


@pytest.fixture(autouse=True)
def one_machine(monkeypatch):
    """The stub server says it runs on the client's machine (a name, no lookup)."""
    monkeypatch.setattr(socket, "gethostname", lambda: "trainer-box")


def server(inbox, publish_answer):
    def answer(method, path, body):
        if path == "/mint/inbox":
            return 200, {"path": str(inbox), "host": "trainer-box"}
        return publish_answer(body)

    return loopback_stub(answer)


@pytest.mark.parametrize("status", [401, 429, 400])
def test_a_publish_refused_before_the_server_took_its_folder_leaves_nothing_in_the_inbox(folder, inbox, status):
    bodies = []
    refusal = (status, {"error": {"message": "refused", "code": status}})
    with server(inbox, lambda body: bodies.append(body) or refusal) as url:
        with pytest.raises(MintAPIError) as exc:
            MintClient(url).publish("acme/bot", str(folder))
    assert exc.value.status == status
    assert b'name="inbox"' in bodies[0]  # the files went through the inbox
    assert list(inbox.iterdir()) == []


def test_files_half_written_into_a_full_inbox_are_removed_and_sent_in_the_body(folder, inbox, monkeypatch):
    real_open = open

    class Full:  # /dev/shm fills up while the weights are written
        def __init__(self, path, mode):
            self.f = real_open(path, mode)

        def write(self, data):
            if self.f.name.endswith("safetensors"):
                self.f.write(bytes(data)[:100])
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(handoff, "open", Full, raising=False)
    bodies = []
    with server(inbox, lambda body: bodies.append(body) or (201, PUBLISHED)) as url:
        assert MintClient(url).publish("acme/bot", str(folder), durable=False).revision == 2
    assert b'name="inbox"' not in bodies[0] and b"\0" * 4096 in bodies[0]  # sent in the body instead
    assert list(inbox.iterdir()) == []
