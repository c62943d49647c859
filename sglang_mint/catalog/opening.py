"""Where a catalog lives: ``init_catalog`` creates one, ``open_catalog`` opens it.

A catalog is a folder (SQLite + blobs inside it) or a ``postgresql://`` database
whose blobs live in S3 or a folder every engine mounts (recorded in the catalog,
so engines open it from the URL alone)::

    cat = init_catalog("/data/catalog", "/models/Llama-3-8B")
    cat = open_catalog("postgresql://mint@db:5432/catalog")   # NotACatalog if there is none
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

from sglang_mint.adapters.base_model import BaseModel, load_base_model
from sglang_mint.catalog.blobs import LocalBlobStore
from sglang_mint.catalog.catalog import Catalog
from sglang_mint.catalog.errors import CatalogError, NotACatalog
from sglang_mint.catalog.location import parse_blobs, parse_location
from sglang_mint.catalog.sql_dialects import PostgresDialect, SqliteDialect
from sglang_mint.catalog.sql_store import SqlMetadataStore
from sglang_mint.catalog.store import BlobStore

DB_NAME = "catalog.db"
# Page cache per connection in a serving process. Each thread that resolves ids has its own
# connection (SGLang converts OpenAI requests on a pool of threads, the scheduler reads on its
# loop and its load workers), so the cache is paid once per thread: at the default 8 MiB that is
# up to 8 MiB per thread of memory the host budget does not see. Lookups hit one index; the OS
# page cache keeps its pages warm anyway.
SERVING_CACHE_KIB = 512
# Local disk cache of a remote (S3) blob store, per engine; least recently used blobs go beyond it.
DEFAULT_BLOB_CACHE_BYTES = 10 << 30


def create_catalog_hint(path: str) -> str:
    """How to make the catalog a folder path names, for every message that finds none there (``mint
    catalog ...`` and a server's ``--mint-catalog``): ``create_catalog_hint("/data/cat")`` ->
    ``"create a catalog with `mint catalog init /data/cat --base-model DIR`"``."""
    return f"create a catalog with `mint catalog init {path} --base-model DIR`"


def init_catalog(target: str, base_model_dir: str, blobs: str | None = None,
                 cache_dir: str | None = None) -> "Catalog":
    """Create an empty catalog for the base model in ``base_model_dir``.

    ``target`` is a folder (SQLite + blobs inside it; refused unless new or empty)
    or ``postgresql://user@host:port/db`` (an existing empty database), which also
    needs ``blobs``: ``s3://bucket/prefix`` or a folder every engine mounts. The blob
    location is stored in the catalog, so engines open it from the URL alone."""
    loc = parse_location(target)
    base = load_base_model(base_model_dir)
    settings = {"base_model": json.dumps(base.to_json()), "created": repr(time.time())}
    if not loc.is_folder:
        if not blobs:
            raise CatalogError(f"a PostgreSQL catalog keeps its blobs elsewhere: add --blobs s3://BUCKET/PREFIX "
                               f"or --blobs /shared/folder to `mint catalog init {loc.display}`")
        where = parse_blobs(blobs)
        if where.kind == "folder":
            LocalBlobStore(where.target).create()
        SqlMetadataStore.create(PostgresDialect(loc.target), {**settings, "blobs": where.target})
        return open_catalog(target, cache_dir=cache_dir)
    if blobs is not None:
        raise CatalogError(f"--blobs is for a postgresql:// catalog; the catalog folder {target!r} keeps its "
                           "blobs inside it")
    path = target
    if os.path.exists(os.path.join(path, DB_NAME)):
        raise CatalogError(f"{path!r} already holds a catalog")
    if os.path.isdir(path) and os.listdir(path):
        raise CatalogError(f"{path!r} is not empty; a new catalog needs an empty or new folder")
    os.makedirs(path, exist_ok=True)
    LocalBlobStore(os.path.join(path, "blobs")).create()
    os.makedirs(os.path.join(path, "views", "tmp"), exist_ok=True)
    tmp_db = os.path.join(path, f".{DB_NAME}.init")
    SqlMetadataStore.create(SqliteDialect(tmp_db), settings)
    os.rename(tmp_db, os.path.join(path, DB_NAME))  # the catalog exists once the db has its final name
    return open_catalog(path)


def open_catalog(target: str, cache_kib: int = 8192, cache_dir: str | None = None,
                 blob_cache_bytes: int = DEFAULT_BLOB_CACHE_BYTES) -> "Catalog":
    """Open an existing catalog: a folder or a ``postgresql://`` URL; NotACatalog if there is none.

    ``cache_kib`` is SQLite's page cache per connection, and there is one connection per
    thread that uses the catalog: a server resolving ids from a pool of threads keeps it small
    (``SERVING_CACHE_KIB``), since the index pages it reads stay in the OS page cache anyway.
    A PostgreSQL catalog keeps this engine's views (and an S3 blob cache of at most
    ``blob_cache_bytes``) in ``cache_dir``, by default the folder location.py derives from the URL."""
    loc = parse_location(target)
    if not loc.is_folder:
        return _open_postgres(loc, cache_dir, blob_cache_bytes)
    path = target
    db = os.path.join(path, DB_NAME)
    if not os.path.isdir(path):
        raise NotACatalog(f"{path!r} is not a folder; {create_catalog_hint(path)}")
    if not os.path.isfile(db):
        raise NotACatalog(f"{path!r} is not a catalog (no {DB_NAME}); {create_catalog_hint(path)}")
    store = SqlMetadataStore(SqliteDialect(db, cache_kib=cache_kib))
    try:
        raw = store.get_setting("base_model")
        if raw is None:
            raise sqlite3.DatabaseError("no base_model setting")
        base = BaseModel.from_json(json.loads(raw))
        store.upgrade()
    except (sqlite3.DatabaseError, ValueError, TypeError) as exc:
        store.close()
        raise NotACatalog(f"{path!r} is not a catalog: {DB_NAME} is unreadable ({exc})") from None
    return Catalog(path, base, store, LocalBlobStore(os.path.join(path, "blobs")))


def _open_postgres(loc, cache_dir: str | None, blob_cache_bytes: int) -> "Catalog":
    store = SqlMetadataStore(PostgresDialect(loc.target))
    try:
        raw, blobs_at = store.get_setting("base_model"), store.get_setting("blobs")
        if raw is None or blobs_at is None:
            raise NotACatalog(f"{loc.display} is not a catalog: its settings lack "
                              f"{'base_model' if raw is None else 'blobs'}")
        base = BaseModel.from_json(json.loads(raw))
        store.upgrade()
        local = loc.cache_dir(cache_dir)
        os.makedirs(os.path.join(local, "views", "tmp"), exist_ok=True)
        where = parse_blobs(blobs_at)
        if where.kind == "folder":
            if not os.path.isdir(where.target):
                raise CatalogError(f"catalog {loc.display} keeps its blobs in the folder {where.target}, which is "
                                   "not on this machine; mount the shared folder there")
            blob_store: BlobStore = LocalBlobStore(where.target)
        else:
            from sglang_mint.catalog.s3_blobs import S3BlobStore
            blob_store = S3BlobStore(url=where.target, cache_dir=os.path.join(local, "blobs"),
                                     cache_bytes=blob_cache_bytes)
    except (ValueError, TypeError) as exc:
        store.close()
        raise NotACatalog(f"{loc.display} is not a catalog: its settings are unreadable ({exc})") from None
    except BaseException:
        store.close()
        raise
    return Catalog(loc.target, base, store, blob_store, views=os.path.join(local, "views"), display=loc.display)
