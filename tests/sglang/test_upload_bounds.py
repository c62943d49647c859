"""Uploads and admin bodies in bounded memory, and catalog rows that are data (issue 19, items 3 and 5).

One real server (CPU, --enable-mint, a SQLite catalog). Its pool holds one o_proj adapter of a
very large rank, so that an upload of UPLOAD_BYTES is a valid adapter that publishes all the way
(stream, check, hash, store) without a special model: o_proj A [R, 128] + B [128, R] in float32 on
2 layers is 2,048 R bytes, so 128 MiB is rank 65,536.

- the server process's peak RSS grows by less than PEAK_LIMIT while it receives and publishes an
  upload of UPLOAD_BYTES (``MINT_UPLOAD_TEST_BYTES`` sets it; the README gives the 1 GiB figure);
- a third concurrent upload beyond --mint-max-concurrent-uploads (default 2) gets 429 with
  Retry-After, and the two admitted ones still publish;
- /mint/prefetch refuses a body over 1 MiB with 413, by Content-Length before reading it, and by
  counting when the body comes chunked;
- a catalog row whose content_digest is a path is refused with 422 naming the adapter, and requests
  refused so never share a batch beyond --max-loras-per-batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import struct
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from hung import HUNG_AFTER_S

from json_calls import post_json
from mint_status import mint_status
from sglang_mint.catalog import init_catalog, open_catalog

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

UPLOAD_BYTES = int(os.environ.get("MINT_UPLOAD_TEST_BYTES", 128 << 20))
RANK = max(8, UPLOAD_BYTES // 2048)
PEAK_LIMIT = 64 << 20
PREFETCH_LIMIT = 1 << 20
GOOD = "ok/o"
PROMPT = "the quick brown fox"
# docs/bad-inputs.md rows walked here rather than in test_bad_inputs.py (they need uploads at once,
# or a body the server must answer before it is sent, which urllib cannot do): key -> test
DOC_CASES = {
    "upload-too-many-at-once": "test_uploads_beyond_the_limit_get_429_and_the_admitted_ones_publish",
    "prefetch-oversize": "test_prefetch_refuses_a_declared_large_body_before_reading_it",
    "prefetch-chunked-oversize": "test_prefetch_refuses_a_chunked_large_body_while_reading_it",
}


def write_o_adapter(folder: Path, rank: int, seed: int) -> Path:
    """A PEFT adapter on o_proj of the tiny model (hidden 128), written in 8 MiB slices."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["o_proj"],
        "base_model_name_or_path": "tiny", "task_type": "CAUSAL_LM"}))
    header, offset = {}, 0
    for layer in range(2):
        for ab, shape in (("A", [rank, 128]), ("B", [128, rank])):
            size = shape[0] * shape[1] * 4
            name = f"base_model.model.model.layers.{layer}.self_attn.o_proj.lora_{ab}.weight"
            header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + size]}
            offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    rng = np.random.default_rng(seed)
    with open(folder / "adapter_model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        left = offset
        while left:
            n = min(left, 8 << 20)
            f.write((rng.standard_normal(n // 4) * 0.01).astype(np.float32).tobytes())
            left -= n
    return folder


def multipart_stream(folder: Path, fields: dict[str, str], hold: threading.Event | None = None):
    """(chunks, content type, length) of a publish upload read from ``folder`` in 1 MiB pieces;
    with ``hold``, the chunks stop after the first MiB of the weights until it is set."""
    boundary = uuid.uuid4().hex
    pieces: list[bytes | Path] = []
    for name, value in fields.items():
        pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for path in (folder / "adapter_config.json", folder / "adapter_model.safetensors"):
        pieces.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{path.name}"\r\n'
                      "Content-Type: application/octet-stream\r\n\r\n".encode())
        pieces.append(path)
        pieces.append(b"\r\n")
    pieces.append(f"--{boundary}--\r\n".encode())
    length = sum(p.stat().st_size if isinstance(p, Path) else len(p) for p in pieces)

    def chunks():
        for p in pieces:
            if isinstance(p, bytes):
                yield p
                continue
            with open(p, "rb") as f:
                while data := f.read(1 << 20):
                    yield data
                    if hold is not None and p.name.endswith(".safetensors"):
                        hold.wait(120)
    return chunks(), f"multipart/form-data; boundary={boundary}", length


def publish(server, adapter_id: str, folder: Path, hold: threading.Event | None = None) -> httpx.Response:
    chunks, ctype, length = multipart_stream(folder, {"warm": "false"}, hold)
    return httpx.post(f"{server.url}/mint/adapters/{adapter_id}/revisions", content=chunks,
                      headers={"Content-Type": ctype, "Content-Length": str(length)}, timeout=600)


def completion(model: str) -> dict:
    return {"model": model, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def raw_request(server, head: bytes, body_chunks=(), wait_s: float = 30.0) -> tuple[int, bytes, bytes]:
    """Send ``head`` then the chunks (from a thread, ignoring a server that stops reading);
    return (status, response headers, response body) as soon as the server answers."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=wait_s)
    sock.sendall(head)

    def send():
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
        except OSError:
            pass

    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < _length(data):
            got = sock.recv(65536)
            if not got:
                break
            data += got
    except socket.timeout:
        pass
    finally:
        sock.close()
    if not data:
        return 0, b"", b""
    headers, _, body = data.partition(b"\r\n\r\n")
    return int(headers.split()[1]), headers, body


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":")[1])
    return 1 << 30


@pytest.fixture(scope="module")
def catalog(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("upload-bounds") / "catalog"
    src = tmp_path_factory.mktemp("upload-bounds-src")
    with init_catalog(str(root), str(tiny_model)) as cat:
        cat.publish(GOOD, str(write_o_adapter(src / "good", 8, seed=1)))
        cat.publish("bad/row", str(write_o_adapter(src / "bad", 8, seed=2)))
    # A row written straight into the database, as anyone who can write a shared catalog could:
    # its content_digest is the path of a folder holding an adapter.
    planted = write_o_adapter(src / "planted", 8, seed=3)
    with sqlite3.connect(root / "catalog.db") as db:
        db.execute("UPDATE revisions SET content_digest = ? WHERE adapter_id = 'bad/row'", (str(planted),))
    return root


@pytest.fixture(scope="module")
def server(tiny_model, catalog, tmp_path_factory, catalog_server):
    with catalog_server(tiny_model, catalog, tmp_path_factory.mktemp("upload-bounds-server"),
                        "--max-lora-rank", str(RANK), "--lora-target-modules", "o_proj",
                        "--max-loras-per-batch", "1") as srv:
        yield srv


def test_upload_peak_memory_is_a_small_constant(server, catalog, tmp_path):
    folder = write_o_adapter(tmp_path / "big", RANK, seed=10)
    size = (folder / "adapter_model.safetensors").stat().st_size
    assert size >= UPLOAD_BYTES - (1 << 20)
    pid = server.proc.pid  # SGLang's HTTP server runs in the launcher process
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS (VmHWM) restarts from the current RSS
    before = proc_status(pid, "VmRSS")
    t0 = time.perf_counter()
    r = publish(server, "big/upload", folder)
    seconds = time.perf_counter() - t0
    assert r.status_code == 201, r.text[:500]
    growth = proc_status(pid, "VmHWM") - before
    print(f"upload of {size / 2**20:.0f} MiB: server peak RSS +{growth / 2**20:.1f} MiB in {seconds:.1f} s")
    assert growth < PEAK_LIMIT, f"peak RSS grew {growth / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB upload"
    with open_catalog(str(catalog)) as cat:
        rev = cat.resolve("big/upload")
        digest = hashlib.sha256((folder / "adapter_model.safetensors").read_bytes()).hexdigest()
        assert rev.files["adapter_model.safetensors"] == digest and rev.rank == RANK


def test_uploads_beyond_the_limit_get_429_and_the_admitted_ones_publish(server, tmp_path):
    hold = threading.Event()
    results: dict[str, httpx.Response | Exception] = {}

    def slow(adapter_id, seed):
        try:
            results[adapter_id] = publish(server, adapter_id, write_o_adapter(tmp_path / adapter_id, 1024, seed), hold)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[adapter_id] = exc

    slow_ones = [threading.Thread(target=slow, args=(f"slow/{i}", 20 + i)) for i in range(2)]
    [t.start() for t in slow_ones]
    try:
        deadline = time.monotonic() + HUNG_AFTER_S
        while mint_status(server)["uploads_in_flight"] < 2:  # both admitted, stalled after their first MiB
            assert time.monotonic() < deadline and all(t.is_alive() for t in slow_ones), results
            time.sleep(0.05)
        third = publish(server, "slow/third", write_o_adapter(tmp_path / "third", 8, seed=30))
    finally:
        hold.set()
        [t.join(300) for t in slow_ones]
    assert third.status_code == 429, third.text[:500]
    assert int(third.headers["Retry-After"]) > 0
    error = third.json()["error"]
    assert "--mint-max-concurrent-uploads" in error["message"] and error["code"] == 429, error
    for adapter_id in ("slow/0", "slow/1"):
        r = results[adapter_id]
        assert isinstance(r, httpx.Response) and r.status_code == 201, (adapter_id, r)
    assert publish(server, "slow/third", tmp_path / "third").status_code == 201  # a slot is free again


def test_prefetch_refuses_a_declared_large_body_before_reading_it(server):
    head = (f"POST /mint/prefetch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {2 * PREFETCH_LIMIT}\r\n\r\n").encode()
    status, _, body = raw_request(server, head, wait_s=20)  # no body is sent at all
    assert status == 413, (status, body[:300])
    assert "above the limit of 1 MiB" in json.loads(body)["error"]["message"]


def test_prefetch_refuses_a_chunked_large_body_while_reading_it(server):
    head = (b"POST /mint/prefetch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    piece = b'{"adapters": ["' + b"x" * (64 << 10)
    chunks = [b"%x\r\n%s\r\n" % (len(piece), piece)] + [b"10000\r\n" + b"y" * 65536 + b"\r\n"] * 40
    status, _, body = raw_request(server, head, chunks, wait_s=60)
    assert status == 413, (status, body[:300])
    assert "1 MiB" in json.loads(body)["error"]["message"]
    code, text = post_json(server, "/mint/prefetch", {"adapters": [GOOD]})
    assert code == 200 and json.loads(text)["prefetching"], text


def test_a_catalog_row_holding_a_path_is_refused_with_422_naming_the_adapter(server):
    code, text = post_json(server, "/v1/completions", completion("bad/row"))
    assert code == 422, (code, text[:500])
    assert "'bad/row'" in text and "content_digest" in text, text
    code, text = post_json(server, "/v1/completions", completion(GOOD))
    assert code == 200, text[:500]  # the server keeps serving


def test_requests_refused_by_a_failed_load_share_no_batch_beyond_max_loras(server):
    """The server holds one adapter per batch (--max-loras-per-batch 1). A request whose adapter
    failed to load finishes as a one-token base-model prefill: it must not join a batch that already
    runs an adapter (SGLang's fetch_new_loras asserted and the scheduler died)."""
    post_json(server, "/v1/completions", completion("bad/row"))  # its failure is remembered a while
    models = [GOOD, "bad/row"] * 8
    with ThreadPoolExecutor(len(models)) as pool:
        answers = list(pool.map(lambda m: post_json(server, "/v1/completions", completion(m)), models))
    assert [code for code, _ in answers] == [200, 422] * 8, [text[:200] for _, text in answers]
    code, text = post_json(server, "/v1/completions", completion(GOOD))
    assert code == 200, text[:500]  # the server keeps serving
