"""Bad input that reaches a real catalog through the ``/mint/*`` endpoints: a 400 naming it, never a
500, and nothing stored that a later call cannot answer.

Played at the ASGI level, as test_mint_api_bad_input.py, on a SQLite catalog of the tiny model.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from fastapi import FastAPI
from test_mint_api_bad_input import BOUNDARY, assert_refused, call

from sglang_mint.catalog import init_catalog
from sglang_mint.config import MintConfig
from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.catalog_names import CatalogNames
from sglang_mint.frontend.mint_api import add_routes

FILES = ("adapter_config.json", "adapter_model.safetensors")


class Counter:
    def inc(self):
        pass


@pytest.fixture
def catalog(tiny_model, tiny_adapters, tmp_path):
    catalog = init_catalog(str(tmp_path / "catalog"), str(tiny_model))
    catalog.publish("acme/bot", str(tiny_adapters["tiny-0000"]))
    yield catalog
    catalog.close()


@pytest.fixture
def app(catalog):
    names = CatalogNames(catalog, SimpleNamespace(resolves=Counter(), not_found=Counter()))
    engine = SimpleNamespace(names=names, config=MintConfig(), max_lora_rank=64, warm=lambda name: None)
    app = FastAPI()
    add_routes(app, lambda: engine, mark_admin=lambda handler: handler)
    admin_guard.install(app, None, marked_paths=lambda _app: set())
    return admin_guard.RecordPeer(app)


def publish(app, folder, metadata: bytes):
    parts = [(f'Content-Disposition: form-data; name="files"; filename="{name}"'.encode(), (folder / name).read_bytes())
             for name in FILES]
    parts.append((b'Content-Disposition: form-data; name="metadata"', metadata))
    body = b"".join(f"--{BOUNDARY}\r\n".encode() + head + b"\r\n\r\n" + value + b"\r\n" for head, value in parts)
    return call(app, "POST", "/mint/adapters/acme/bot/revisions", body + f"--{BOUNDARY}--\r\n".encode(),
                f"multipart/form-data; boundary={BOUNDARY}")


@pytest.mark.parametrize("metadata, words", [
    (b'{"step": 100000000000000000000}', ("metadata['step']", "64 bits")),  # orjson writes 64-bit integers only
    (b'{"note": "\\ud800"}', ("metadata['note']", "lone UTF-16 surrogate")),  # orjson: not valid UTF-8
    (b'{"x": ' + b"[" * 300 + b"]" * 300 + b"}", ("metadata['x']", "levels deep")),  # orjson: 254 levels at most
    (b'{"loss": NaN}', ("metadata['loss']", "nan is not a JSON number")),
    (b'{"lr": [1e400]}', ("metadata['lr'][0]", "inf is not a JSON number")),
])
def test_metadata_the_adapter_view_cannot_write_is_refused_at_publish(app, tiny_adapters, metadata, words):
    # Stored, each of these made GET /mint/adapters/acme/bot a 500 for good (NaN was kept as non-JSON text).
    assert_refused(publish(app, tiny_adapters["tiny-0001"], metadata), 400, *words)
    shown = call(app, "GET", "/mint/adapters/acme/bot")
    assert shown.status_code == 200, shown.text
    assert [rev["revision"] for rev in shown.json()["revisions"]] == [1]


def test_a_prefetch_id_that_is_not_text_is_a_400(app):
    # A lone surrogate ("\ud800" in the JSON) was keyed as such in the answer's errors, which orjson cannot write
    response = call(app, "POST", "/mint/prefetch", b'{"adapters": ["acme/bot", "\\ud800"]}')
    assert_refused(response, 400, "adapters[1]", "lone UTF-16 surrogate")
    assert json.loads(call(app, "POST", "/mint/prefetch", b'{"adapters": ["acme/bot"]}').text)["errors"] == {}


def nested(levels: int, inner):
    for _ in range(levels):
        inner = [inner]
    return inner


@pytest.mark.parametrize("stored, shown", [
    ('{"step": 100000000000000000000}', {"step": "100000000000000000000"}),
    ('{"note": "a\\ud800b"}', {"note": "a\\ud800b"}),
    ('{"loss": NaN, "lr": [Infinity]}', {"loss": None, "lr": [None]}),
    ('{"x": ' + "[" * 300 + "]" * 300 + "}", {"x": nested(63, "[" * 237 + "]" * 237)}),  # text past 64 levels
])
def test_metadata_an_older_version_stored_is_shown_not_a_500(app, catalog, stored, shown):
    """Metadata stored before publish checked it (37afd75) made every GET of its adapter a 500: it is
    shown as near as JSON can say it (a string where a number or nesting cannot be written)."""
    with catalog.store._write() as c:  # as that version stored it: Python's json.dumps of what it was given
        c.execute("UPDATE revisions SET metadata = ? WHERE adapter_id = 'acme/bot' AND revision = 1", (stored,))
    response = call(app, "GET", "/mint/adapters/acme/bot")
    assert response.status_code == 200, response.text
    [rev] = response.json()["revisions"]
    assert rev["metadata"] == shown


def test_a_full_disk_is_a_507_naming_it_and_a_publish_that_fits_is_stored(app, catalog, tiny_adapters, tmp_path):
    """The disk filling under an upload (here the kernel's file-size limit, RLIMIT_FSIZE, which fails a write
    with EFBIG as a full disk fails it with ENOSPC) is a 507 that says so, not a bare 500; what the upload
    wrote is gone, and a smaller adapter is still published."""
    import os
    import resource

    from sglang_mint.catalog.upload import upload_folder

    big, small = tiny_adapters["tiny-0000"], tiny_adapters["tiny-0002"]  # 134 KB and 20 KB of weights
    limit = 64 * 1024
    assert (small / FILES[1]).stat().st_size < limit < (big / FILES[1]).stat().st_size
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        refused = publish(app, big, b"{}")
        stored = publish(app, small, b"{}")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert refused.status_code == 507, refused.text
    error = refused.json()["error"]
    assert error["code"] == 507 and error["type"] == "server_error"
    for words in ("upload for 'acme/bot': no room left to write to", upload_folder(catalog), "File too large"):
        assert words in error["message"], error["message"]
    assert stored.status_code == 201, stored.text
    assert catalog.resolve("acme/bot").revision == 2  # the refused upload took no revision
    assert os.listdir(upload_folder(catalog)) == []
