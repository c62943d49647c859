"""Fixtures for the catalog tests (helpers live in catalog_fixtures.py: a module named
conftest is ambiguous when pytest collects several test folders at once).

``cat`` runs every test that uses it against both backends:
- ``sqlite``: a catalog folder (SQLite + blobs inside it), the default;
- ``postgres``: a fresh database on a real PostgreSQL server (``pg_url``) with blobs in a
  real S3-compatible server (``s3_url``, moto); both fixtures come from tests/servers/,
  registered for every folder by tests/conftest.py's ``pytest_plugins``.
"""

from __future__ import annotations

import pytest
from catalog_fixtures import write_base, write_peft

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture
def base_dir(tmp_path):
    return write_base(tmp_path / "tiny")


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path, monkeypatch):
    """The backend's name; a PostgreSQL catalog's engine-local folder goes under tmp_path."""
    monkeypatch.setenv("MINT_CACHE_DIR", str(tmp_path / "mint-cache"))
    return request.param


@pytest.fixture
def catalog_target(request, backend, tmp_path):
    """(target, blobs) for init_catalog / `mint catalog init TARGET [--blobs BLOBS]` on this backend."""
    if backend == "sqlite":
        return str(tmp_path / "cat"), None
    return request.getfixturevalue("pg_url"), request.getfixturevalue("s3_url")


@pytest.fixture
def cat(catalog_target, base_dir):
    from sglang_mint.catalog import init_catalog
    target, blobs = catalog_target
    c = init_catalog(target, base_dir, blobs=blobs)
    yield c
    c.close()


@pytest.fixture
def peft(tmp_path):
    """peft(name, **kw) writes a PEFT folder under tmp_path and returns its path."""
    def make(name="a", **kw):
        return write_peft(tmp_path / "adapters" / name, **kw)
    return make

