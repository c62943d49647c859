"""The local blob store (catalog/blobs.py): a write that fails leaves nothing behind in ``tmp/``.

A blob is written into ``tmp/<digest prefix>.<pid>.<ns>`` and renamed into place; a disk that fills
up or a source file that shrinks while it is copied must not leave that partial file for gc's grace
period (an hour by default: on a full disk, every retry would add one more).
"""

from __future__ import annotations

import errno
import hashlib
import os

import pytest

from sglang_mint.catalog.blobs import LocalBlobStore

DATA = os.urandom(3 << 20)
DIGEST = hashlib.sha256(DATA).hexdigest()


@pytest.fixture
def blobs(tmp_path):
    store = LocalBlobStore(str(tmp_path / "blobs"))
    store.create()
    return store


def test_a_write_that_fills_the_disk_leaves_no_temp_file(blobs, monkeypatch):
    write, calls = os.write, []

    def write_until_full(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data[:1 << 20])  # a short write first: the rest needs another call

    monkeypatch.setattr(os, "write", write_until_full)
    with pytest.raises(OSError, match="No space left"):
        blobs.put(DATA)
    assert len(calls) == 2 and os.listdir(blobs.tmp) == [] and not blobs.exists(DIGEST)
    monkeypatch.undo()
    assert blobs.put(DATA) == DIGEST and blobs.read(DIGEST) == DATA  # and a later write succeeds


def test_a_source_that_shrinks_while_it_is_copied_leaves_no_temp_file(blobs, tmp_path, monkeypatch):
    source = tmp_path / "upload.safetensors"
    source.write_bytes(DATA)
    sendfile = os.sendfile

    def shrink_then_send(out_fd, in_fd, offset, count):
        os.truncate(source, 1 << 20)  # another writer cuts the file after its size was read
        return sendfile(out_fd, in_fd, offset, count)

    monkeypatch.setattr(os, "sendfile", shrink_then_send)
    with pytest.raises(OSError, match="shrank while it was copied"):
        blobs.put_file(str(source), DIGEST)
    assert os.listdir(blobs.tmp) == [] and not blobs.exists(DIGEST)
