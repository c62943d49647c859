"""An engine's disk under a long tail of adapters: views plus the blob cache stay near the cache's bound.

A PostgreSQL catalog with blobs in a real S3-compatible server (moto); the engine's blob cache
holds about three adapters, and twelve are loaded one after another, then the first again.
"""

from __future__ import annotations

import os

from catalog_fixtures import write_peft

from sglang_mint.catalog import init_catalog, open_catalog

N = 12


def disk_bytes(root: str) -> int:
    """Bytes of distinct files under ``root`` (a file linked twice counts once)."""
    seen, total = set(), 0
    for folder, _, names in os.walk(root):
        for name in names:
            st = os.stat(os.path.join(folder, name))
            if st.st_ino not in seen:
                seen.add(st.st_ino)
                total += st.st_size
    return total


def test_views_do_not_outgrow_the_blob_cache(pg_url, s3_url, base_dir, tmp_path):
    with init_catalog(pg_url, base_dir, blobs=s3_url, cache_dir=str(tmp_path / "publisher")) as cat:
        for i in range(N):
            cat.publish(f"tail/{i}", write_peft(tmp_path / "src" / str(i), rank=16, seed=i))
        one = cat.resolve("tail/0").size_bytes
    engine = tmp_path / "engine"
    with open_catalog(pg_url, cache_dir=str(engine), blob_cache_bytes=3 * one) as cat:
        cat.blobs.cache.keep_recent_s = cat.view_folders.keep_recent_s = 0  # no grace: test the bound itself
        first = cat.resolve("tail/0")
        weights = open(os.path.join(first.local_path(), "adapter_model.safetensors"), "rb").read()
        for i in range(1, N):
            cat.resolve(f"tail/{i}").local_path()
        assert cat.blobs.cache.evicted > 0
        assert disk_bytes(str(engine)) <= 4 * one, "views kept bytes the blob cache had dropped"
        # a trimmed view is built again, from the store, with the same bytes
        again = cat.resolve("tail/0").local_path()
        assert open(os.path.join(again, "adapter_model.safetensors"), "rb").read() == weights


def test_a_view_in_use_is_not_trimmed(pg_url, s3_url, base_dir, tmp_path):
    with init_catalog(pg_url, base_dir, blobs=s3_url, cache_dir=str(tmp_path / "publisher")) as cat:
        for i in range(4):
            cat.publish(f"tail/{i}", write_peft(tmp_path / "src" / str(i), rank=16, seed=i))
        one = cat.resolve("tail/0").size_bytes
    with open_catalog(pg_url, cache_dir=str(tmp_path / "engine"), blob_cache_bytes=one) as cat:
        cat.blobs.cache.keep_recent_s = 0
        cat.view_folders.keep_recent_s = 3600  # every view was used within the hour
        paths = [cat.resolve(f"tail/{i}").local_path() for i in range(4)]
        assert cat.blobs.cache.evicted > 0
        assert all(os.path.isfile(os.path.join(p, "adapter_model.safetensors")) for p in paths)
