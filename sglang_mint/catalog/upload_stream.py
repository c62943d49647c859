"""Request bodies of the admin endpoints, read in bounded memory.

A publish (``multipart/form-data``) is streamed as it arrives (Starlette's
``request.stream()``, about 64 KiB a chunk): each file part goes to its own
temp file under ``upload.upload_folder`` (``uploads/<random>/0``, ``/1``...,
never a name the client chose), with at most 1 MiB of it in memory before it is
written; form fields are kept, 64 KiB each at most and each sent once (so a
body has at most ten parts). A file name an adapter never holds (a pickle,
``notes.txt``) is refused when its part begins, before its bytes are read. The
body is refused with 413 as soon as it passes ``--mint-max-upload-bytes`` (at
once if its Content-Length says so). The temp folder goes when the request
ends, published or not.

So one upload holds a small constant of memory whatever its size: a real
server's peak RSS grew by 3.5 MiB while it received, checked, hashed and
stored a 1 GiB adapter, as for a 128 MiB one (tests/sglang/test_upload_bounds.py).

``UploadGate`` admits ``--mint-max-concurrent-uploads`` uploads at once; one
more is answered 429 with Retry-After at once, before its body is read (a
refused upload costs nothing, a queued one would hold its connection and,
later, its size in temp disk).

``read_capped`` reads a small JSON body (``/mint/prefetch``: at most 1 MiB)
the same way: 413 by Content-Length before reading, else by counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import tempfile
import time

from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header

from sglang_mint.catalog.upload import check_file_name
from sglang_mint.errors import MintError, no_room

UPLOAD_FIELDS = ("durable", "expected_revision", "inbox", "metadata", "pack", "warm")
MAX_FILES = 4
MAX_FIELD_BYTES = 64 << 10
FLUSH_BYTES = 1 << 20
RETRY_AFTER_S = 5
STALE_S = 24 * 3600  # a temp folder this old was left by a server that died mid-upload
MAX_DIGITS = 18  # of a number a client writes: 10**18 bytes or revisions is past any real one


class BodyRefused(MintError):
    """A request body refused before or while it is read; ``http_status`` says why (400, 413, 415)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.http_status = status


class UploadGate:
    """At most ``limit`` uploads at once, on one event loop (no lock needed): ``enter`` says whether
    this one may start; every admitted upload calls ``leave`` once."""

    def __init__(self, limit: int):
        self.limit, self.active = limit, 0

    def enter(self) -> bool:
        if self.active >= self.limit:
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


def upload_gate(app, limit: int) -> UploadGate:
    """The server's gate, kept on ``app.state`` (made on the first upload)."""
    gate = getattr(app.state, "mint_upload_gate", None)
    if gate is None:
        gate = app.state.mint_upload_gate = UploadGate(limit)
    return gate


def uploads_in_flight(app) -> int:
    """How many uploads the server's gate has admitted and not yet let go (0 before the first)."""
    gate = getattr(app.state, "mint_upload_gate", None)
    return 0 if gate is None else gate.active


def ascii_int(text: str | None) -> int | None:
    """A decimal a client wrote (a header, a form field): ``"12"`` -> 12, ``"0"`` -> 0; None for None
    and anything else: ``"-3"``, ``" 3"``, ``"²"`` (a digit to str.isdigit(), which int() refuses), and
    more than MAX_DIGITS digits (``"9" * 5000``: int() refuses past 4,300 with ValueError)."""
    if text is None or not (text.isascii() and text.isdigit()) or len(text) > MAX_DIGITS:
        return None
    return int(text)


def declared_length(request) -> int | None:
    """The request's Content-Length, or None when it has none or ``ascii_int`` refuses it: the body
    is then counted as it is read, as one sent without a length. None too beside a Transfer-Encoding:
    uvicorn's parser (h11) then reads the body chunked, to its end, whatever Content-Length claims."""
    if "transfer-encoding" in request.headers:
        return None
    return ascii_int(request.headers.get("content-length"))


def _declared_length(request, limit: int, what: str) -> None:
    declared = declared_length(request)
    if declared is not None and declared > limit:
        raise BodyRefused(413, f"{what}: the body is {declared} bytes, above the limit of {_size(limit)}")


def _size(n: int) -> str:
    return f"{n >> 20} MiB ({n} bytes)" if n % (1 << 20) == 0 else f"{n} bytes"


async def read_capped(request, limit: int, what: str) -> bytes:
    """The whole body, refused with 413 before it is read if Content-Length is above ``limit``, or as
    soon as it passes ``limit`` (a chunked body)."""
    _declared_length(request, limit, what)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyRefused(413, f"{what}: the body passed the limit of {_size(limit)}")
        chunks.append(chunk)
    return b"".join(chunks)


@contextlib.asynccontextmanager
async def received_upload(request, root: str, limit: int, where: str):
    """``async with received_upload(...) as (files, fields, digests)``: files {file name: temp path},
    fields {name: text}, digests {file name: sha256 hex, taken as the bytes were written}. Raises
    BodyRefused, InvalidAdapter or NoRoom; the temp files still there after the block are removed."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise BodyRefused(415, "publish takes multipart/form-data: the files adapter_config.json and "
                               "adapter_model.safetensors (or adapter.mintpack), e.g. "
                               "curl -F files=@adapter_config.json -F files=@adapter_model.safetensors URL")
    _declared_length(request, limit, f"{where} (--mint-max-upload-bytes)")
    await asyncio.to_thread(_remove_stale, root)
    folder = await asyncio.to_thread(_new_folder, root)
    receiver = _Receiver(folder, where)
    try:
        try:
            await receiver.receive(request, limit)
        except OSError as exc:
            refused = no_room(exc, where, folder)
            if refused is None:
                raise
            raise refused from None
        yield receiver.files, receiver.fields, {name: h.hexdigest() for name, h in receiver.hashes.items()}
    finally:
        receiver.close()
        await asyncio.to_thread(shutil.rmtree, folder, True)


def _new_folder(root: str) -> str:
    os.makedirs(root, exist_ok=True)
    return tempfile.mkdtemp(prefix="upload-", dir=root)


def _remove_stale(root: str) -> None:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return
    for name in names:
        path = os.path.join(root, name)
        try:
            if time.time() - os.stat(path).st_mtime > STALE_S:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


class _Receiver:
    """python-multipart's callbacks, writing file parts to temp files as they arrive."""

    def __init__(self, folder: str, where: str):
        self.folder, self.where = folder, where
        self.files: dict[str, str] = {}
        self.fields: dict[str, str] = {}
        self._header_name = self._header_value = b""
        self._disposition = b""
        self._file = None  # the open temp file of the current file part
        self._pending = bytearray()  # its bytes not yet handed to _writes
        self.hashes: dict[str, object] = {}  # file name -> its sha256, fed as the bytes are written
        self._hash = None  # the current file part's
        self._writes: list[tuple] = []  # (file, bytes to write or None: close it, its hash)
        self._field: tuple[str, bytearray] | None = None
        self._ended = False

    async def receive(self, request, limit: int) -> None:
        _, params = parse_options_header(request.headers["content-type"])
        if b"boundary" not in params:
            raise BodyRefused(400, "malformed multipart body: no boundary in the Content-Type header")
        parser = MultipartParser(params[b"boundary"], {
            "on_part_begin": self._part_begin, "on_header_field": self._header_field,
            "on_header_value": self._header_val, "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_end": self._end})
        size = 0
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise BodyRefused(413, f"{self.where}: the upload passed this server's limit of {_size(limit)} "
                                           "(--mint-max-upload-bytes)")
                parser.write(chunk)
                if len(self._pending) >= FLUSH_BYTES:
                    self._hand_over()
                if self._writes:
                    await self._flush()
            parser.finalize()
        except MultipartParseError as exc:
            raise BodyRefused(400, f"malformed multipart body: {exc}") from None
        await self._flush()
        if not self._ended:
            raise BodyRefused(400, "malformed multipart body: it ends before its closing boundary")
        if not self.files and "inbox" not in self.fields:  # inbox: the files are in shared memory
            raise BodyRefused(400, "no files in the upload: send adapter_config.json and "
                                   "adapter_model.safetensors, or adapter.mintpack")

    def _hand_over(self) -> None:
        if self._pending:
            self._writes.append((self._file, bytes(self._pending), self._hash))
            self._pending.clear()

    async def _flush(self) -> None:
        """Carry out the writes and closes queued by the callbacks, in order, off the event loop."""
        writes, self._writes = self._writes, []
        await asyncio.to_thread(_carry_out, writes)

    # -- callbacks (inside parser.write) ---------------------------------------------
    def _part_begin(self) -> None:
        self._disposition = b""

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_val(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        if self._header_name.lower() == b"content-disposition":
            self._disposition = self._header_value
        self._header_name = self._header_value = b""

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._disposition)
        key = options.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" not in options:
            if key not in UPLOAD_FIELDS:
                raise BodyRefused(400, f"unknown field {key!r}; the fields are {', '.join(UPLOAD_FIELDS)}")
            if key in self.fields:  # expected_revision=5 then 7: which did the trainer mean?
                raise BodyRefused(400, f"field {key!r} sent twice")
            self._field = (key, bytearray())
            return
        name = os.path.basename(options[b"filename"].decode("utf-8", "replace")) or key
        check_file_name(name, self.where)  # a pickle or a stray file: refused before its bytes arrive
        if name in self.files:
            raise BodyRefused(400, f"file {name!r} sent twice")
        if len(self.files) >= MAX_FILES:
            raise BodyRefused(400, f"more than {MAX_FILES} files in the upload")
        path = os.path.join(self.folder, str(len(self.files)))
        self.files[name] = path
        self._file = open(path, "xb")  # noqa: SIM115 - closed by _carry_out or close()
        self._hash = self.hashes[name] = hashlib.sha256()

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._field is not None:
            if len(self._field[1]) + end - start > MAX_FIELD_BYTES:
                raise BodyRefused(400, f"field {self._field[0]!r} is over {MAX_FIELD_BYTES} bytes")
            self._field[1].extend(data[start:end])
        elif self._file is not None:
            self._pending.extend(data[start:end])

    def _part_end(self) -> None:
        if self._field is not None:
            self.fields[self._field[0]] = self._field[1].decode("utf-8", "replace")
            self._field = None
        elif self._file is not None:
            self._hand_over()
            self._writes.append((self._file, None, None))
            self._file = None

    def _end(self) -> None:
        self._ended = True

    def close(self) -> None:
        for f in [self._file] + [f for f, data, _ in self._writes if data is None]:
            if f is not None:
                f.close()


def _carry_out(writes: list[tuple]) -> None:
    for f, data, digest in writes:
        if data is None:
            f.close()
        else:
            f.write(data)
            digest.update(data)  # hashlib releases the GIL on large buffers
