"""What only a postgresql:// catalog has: URL parsing, the engine-local folder, refusals, no password in messages."""

import os

import psycopg
import pytest

from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.errors import CatalogError, NotACatalog
from sglang_mint.catalog.location import parse_blobs, parse_location

URL = "postgresql://mint:s3cret@db.example:5432/catalog"


def test_location_parsing_and_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MINT_CATALOG_CACHE", raising=False)
    monkeypatch.setenv("MINT_CACHE_DIR", str(tmp_path))
    loc = parse_location(URL)
    assert (loc.kind, loc.display) == ("postgres", "postgresql://mint:***@db.example:5432/catalog")
    folder = loc.cache_dir()
    assert os.path.dirname(folder) == str(tmp_path / "catalogs") and len(os.path.basename(folder)) == 16
    # the password is not part of the catalog's identity; host and database are
    assert parse_location(URL.replace("s3cret", "other")).cache_dir() == folder
    assert parse_location("postgres://mint@db.example:5432/catalog").cache_dir() != folder
    assert parse_location(URL.replace("/catalog", "/other")).cache_dir() != folder
    assert loc.cache_dir(str(tmp_path / "mine")) == str(tmp_path / "mine")
    monkeypatch.setenv("MINT_CATALOG_CACHE", str(tmp_path / "env"))
    assert loc.cache_dir() == str(tmp_path / "env")
    assert parse_location("rel/cat").target == os.path.abspath("rel/cat")
    with pytest.raises(CatalogError, match="names no database"):
        parse_location("postgresql://mint:s3cret@db.example:5432")
    with pytest.raises(CatalogError, match="unknown scheme 'mysql'") as e:
        parse_location("mysql://mint:s3cret@db/x")
    assert "s3cret" not in str(e.value)
    assert parse_blobs("s3://bucket/prefix/").target == "s3://bucket/prefix"
    with pytest.raises(CatalogError, match="names no bucket"):
        parse_blobs("s3:///prefix")
    with pytest.raises(CatalogError, match="only s3://"):
        parse_blobs("gs://bucket/x")


def test_init_refusals(pg_url, postgres_server, base_dir, tmp_path):
    with pytest.raises(CatalogError, match="add --blobs"):
        init_catalog(pg_url, base_dir)
    with pytest.raises(CatalogError, match="--blobs is for a postgresql:// catalog"):
        init_catalog(str(tmp_path / "folder"), base_dir, blobs=str(tmp_path / "b"))
    init_catalog(pg_url, base_dir, blobs=str(tmp_path / "blobs")).close()
    with pytest.raises(CatalogError, match="already holds a catalog"):
        init_catalog(pg_url, base_dir, blobs=str(tmp_path / "blobs"))
    other = pg_url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(other, autocommit=True) as c:
        c.execute("CREATE TABLE IF NOT EXISTS someone_elses(x int)")
    try:
        with pytest.raises(CatalogError, match="is not empty") as e:
            init_catalog(other, base_dir, blobs=str(tmp_path / "blobs2"))
        assert postgres_server.password not in str(e.value)
    finally:
        with psycopg.connect(other, autocommit=True) as c:
            c.execute("DROP TABLE someone_elses")


def test_open_refusals_never_show_the_password(pg_url, postgres_server, base_dir, tmp_path):
    pw = postgres_server.password
    with pytest.raises(NotACatalog, match="is not a catalog") as e:
        open_catalog(pg_url)  # an empty database
    assert pw not in str(e.value) and "***" in str(e.value)
    with pytest.raises(CatalogError, match="cannot connect") as e:
        open_catalog(pg_url.replace(pw, "wrong-" + pw))
    assert pw not in str(e.value) and "password authentication failed" in str(e.value)
    with pytest.raises(CatalogError, match="cannot connect") as e:
        open_catalog(pg_url.replace(f":{postgres_server.port}/", ":1/"))
    assert pw not in str(e.value)
    shared = tmp_path / "shared"
    init_catalog(pg_url, base_dir, blobs=str(shared)).close()
    os.rename(shared, tmp_path / "moved")
    with pytest.raises(CatalogError, match="not on this machine") as e:
        open_catalog(pg_url)
    assert pw not in str(e.value)


def test_engines_share_metadata_and_blobs_but_not_views(pg_url, base_dir, tmp_path, peft):
    """Two engines: one URL, their own local folders; the blob folder is the shared one."""
    shared = str(tmp_path / "shared")
    with init_catalog(pg_url, base_dir, blobs=shared, cache_dir=str(tmp_path / "e1")) as e1, \
            open_catalog(pg_url, cache_dir=str(tmp_path / "e2")) as e2:
        rev = e1.publish("acme/bot", peft("v1", seed=1))
        assert e2.resolve("acme/bot") == rev
        p1, p2 = e1.resolve("acme/bot").local_path(), e2.resolve("acme/bot").local_path()
        assert p1.startswith(str(tmp_path / "e1" / "views")) and p2.startswith(str(tmp_path / "e2" / "views"))
        assert sorted(os.listdir(p1)) == sorted(os.listdir(p2))
        assert e2.blobs.exists(rev.files["adapter_model.safetensors"])
        assert e1.stats()["path"] == e1.display and "***" in e1.display


def test_engine_flags_open_a_postgres_catalog(pg_url, postgres_server, base_dir, tmp_path, peft):
    """--mint-catalog URL [--mint-catalog-cache DIR] [--mint-blob-cache-bytes SIZE], as MintConfig checks them."""
    from sglang_mint.config import MintConfig
    from sglang_mint.errors import MintError

    pw = postgres_server.password
    with pytest.raises(MintError, match="--mint-catalog postgresql://postgres:\\*\\*\\*@") as e:
        MintConfig.from_flags(catalog=pg_url)  # an empty database
    assert pw not in str(e.value)
    with pytest.raises(MintError, match="need --mint-catalog"):
        MintConfig.from_flags(catalog_cache=str(tmp_path / "c"))
    with pytest.raises(MintError, match="--mint-blob-cache-bytes"):
        MintConfig.from_flags(catalog=pg_url, blob_cache="lots")
    with init_catalog(pg_url, base_dir, blobs=str(tmp_path / "shared")) as cat:
        cat.publish("acme/bot", peft("v1", seed=1))
    config = MintConfig.from_flags(catalog=pg_url, catalog_cache=str(tmp_path / "engine"), blob_cache="1GiB")
    assert (config.catalog, config.blob_cache_bytes) == (pg_url, 2**30) and pw not in repr(config)
    with config.open_catalog() as cat:
        assert cat.resolve("acme/bot").local_path().startswith(str(tmp_path / "engine" / "views"))
