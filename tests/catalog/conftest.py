"""Fixtures for the catalog tests (helpers live in catalog_fixtures.py: a module named
conftest is ambiguous when pytest collects several test folders at once)."""

from __future__ import annotations

import pytest
from catalog_fixtures import write_base, write_peft


@pytest.fixture
def base_dir(tmp_path):
    return write_base(tmp_path / "tiny")


@pytest.fixture
def cat(tmp_path, base_dir):
    from sglang_mint.catalog import init_catalog
    c = init_catalog(str(tmp_path / "cat"), base_dir)
    yield c
    c.close()


@pytest.fixture
def peft(tmp_path):
    """peft(name, **kw) writes a PEFT folder under tmp_path and returns its path."""
    def make(name="a", **kw):
        return write_peft(tmp_path / "adapters" / name, **kw)
    return make


