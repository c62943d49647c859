"""S3BlobStore against a real moto server process over HTTP, with a real disk cache."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
import time

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.catalog.errors import BlobMissing, BlobStoreUnavailable
from sglang_mint.catalog.s3_blobs import S3BlobStore, parse_s3_url


def blob(n: int, seed: int) -> bytes:
    """``n`` pseudo-random bytes (never zeros), different for each seed."""
    out, block = bytearray(), hashlib.sha256(f"blob-{seed}".encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block * 32
    return bytes(out[:n])


@pytest.fixture
def store(s3_url, tmp_path):
    return S3BlobStore(s3_url, str(tmp_path / "cache"), cache_bytes=64 << 20)


def cached(store, digest) -> bool:
    return os.path.exists(store.cache.path(digest))


def test_put_read_exists_delete_roundtrip(store, moto_server):
    data = blob(300_000, 1)
    digest = store.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.exists(digest)
    assert store.read(digest) == data
    assert store.size(digest) == len(data)
    assert moto_server.requests("PUT", store.key(digest)) == 1
    assert store.put(data, sync=False) == digest  # present: touched (a server-side copy), not uploaded again
    assert store.read(digest) == data
    store.sync()
    store.delete(digest)
    assert not store.exists(digest)
    store.delete(digest)  # deleting twice is fine
    with pytest.raises(BlobMissing, match=digest):
        store.read(digest)
    with pytest.raises(BlobMissing, match=digest):
        store.local_path(digest)


def test_iter_digests_in_digest_order_skips_stray_keys(store, moto_server):
    digests = {store.put(blob(1000 + i, i)) for i in range(40)}
    bucket, prefix = parse_s3_url(store.url)
    raw = moto_server.client()
    raw.put_object(Bucket=bucket, Key=f"{prefix}/blobs/aa/not-a-digest", Body=b"x")
    raw.put_object(Bucket=bucket, Key=f"{prefix}/other/{'a' * 64}", Body=b"x")
    listed = list(store.iter_digests())
    assert listed == sorted(digests)


def test_urls_and_digests_are_checked(s3_url, tmp_path):
    assert parse_s3_url("s3://bkt/a/b/") == ("bkt", "a/b")
    assert parse_s3_url("s3://bkt") == ("bkt", "")
    with pytest.raises(Exception, match="not an S3 blob URL"):
        S3BlobStore("/data/blobs", str(tmp_path))
    store = S3BlobStore(s3_url, str(tmp_path / "c"))
    for bad in ("../../etc/passwd", "A" * 64, "ab"):
        with pytest.raises(BlobMissing, match="not a blob digest"):
            store.local_path(bad)


def test_local_path_downloads_once_then_serves_from_disk(store, moto_server, s3_url, tmp_path):
    data = blob(2_500_000, 2)
    digest = store.put(data)
    key = store.key(digest)
    path = store.local_path(digest)
    assert path == store.cache.path(digest)
    assert open(path, "rb").read() == data
    assert moto_server.requests("GET", key) == 1
    assert store.local_path(digest) == path
    store.delete(digest)  # the engine's copy outlives the object
    other = S3BlobStore(s3_url, str(tmp_path / "cache"))  # another process of the same engine
    assert other.local_path(digest) == path
    assert moto_server.requests("GET", key) == 1
    assert os.stat(path).st_mode & 0o222 == 0  # read-only: a view's hard link cannot be written through
    assert os.listdir(store.cache.tmp) == []


def test_corrupt_object_is_refused_and_not_cached(store, moto_server):
    good, bad = blob(100_000, 3), blob(100_000, 4)
    digest = hashlib.sha256(good).hexdigest()
    bucket, _ = parse_s3_url(store.url)
    moto_server.client().put_object(Bucket=bucket, Key=store.key(digest), Body=bad)
    with pytest.raises(BlobMissing, match=f"blob {digest} from {store.url} is corrupt"):
        store.local_path(digest)
    assert not cached(store, digest)
    assert os.listdir(store.cache.tmp) == []


def test_cache_evicts_least_recently_used(s3_url, tmp_path):
    size = 100_000
    store = S3BlobStore(s3_url, str(tmp_path / "cache"), cache_bytes=int(3.5 * size), keep_recent_s=0)
    a, b, c, d = (store.put(blob(size, 10 + i)) for i in range(4))
    for digest in (a, b, c):
        store.local_path(digest)
    now = time.time()
    for digest, age in ((b, 300), (c, 200), (a, 100)):  # b is least recently used, a most
        os.utime(store.cache.path(digest), (now - age, now - age))
    store.local_path(d)  # 4 blobs > 3.5: evict down to 90 % of the bound, i.e. just b
    assert [cached(store, x) for x in (a, b, c, d)] == [True, False, True, True]
    assert store.cache.evicted == 1
    assert store.cache.cached_bytes() == 3 * size <= store.cache.max_bytes
    assert open(store.local_path(b), "rb").read() == blob(size, 11)  # fetched again when needed


def test_recent_files_are_not_evicted(s3_url, tmp_path):
    """A path handed out a moment ago may be about to be hard-linked: keep it, even over the bound."""
    size = 100_000
    # An hour: the puts and downloads below finish well within it, however starved the machine.
    store = S3BlobStore(s3_url, str(tmp_path / "cache"), cache_bytes=int(1.5 * size), keep_recent_s=3600)
    digests = [store.put(blob(size, 20 + i)) for i in range(3)]
    for digest in digests:
        store.local_path(digest)
    assert all(cached(store, x) for x in digests)
    assert store.cache.evicted == 0
    old = time.time() - 7200
    for digest in digests[:2]:
        os.utime(store.cache.path(digest), (old, old))
    store.cache._limit = 0  # force the next download to rescan
    store.local_path(store.put(blob(size, 29)))
    assert [cached(store, x) for x in digests] == [False, False, True]


def test_hard_link_survives_eviction(s3_url, tmp_path):
    """What catalog views rely on: a view's link keeps the bytes after the cache drops its name."""
    store = S3BlobStore(s3_url, str(tmp_path / "cache"), cache_bytes=150_000, keep_recent_s=0)
    data = blob(100_000, 30)
    digest = store.put(data)
    view = tmp_path / "view-file"
    os.link(store.local_path(digest), view)
    os.utime(store.cache.path(digest), (1, 1))
    store.local_path(store.put(blob(100_000, 31)))
    assert not cached(store, digest)
    assert view.read_bytes() == data


CHILD = """
import hashlib, os, sys, time
from sglang_mint.catalog.s3_blobs import S3BlobStore
url, cache, digest, go = sys.argv[1:]
store = S3BlobStore(url, cache)
while not os.path.exists(go):
    time.sleep(0.005)
path = store.local_path(digest)
print(path, hashlib.sha256(open(path, "rb").read()).hexdigest())
"""


def test_concurrent_processes_and_threads_fetch_one_intact_file(store, moto_server, s3_url, tmp_path):
    data = blob(8_000_000, 40)
    digest = store.put(data)
    go = tmp_path / "go"
    cache = str(tmp_path / "cache")
    procs = [subprocess.Popen([sys.executable, "-c", CHILD, s3_url, cache, digest, str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(5)]
    results, errors = [], []

    def in_thread():
        try:
            p = store.local_path(digest)
            results.append((p, hashlib.sha256(open(p, "rb").read()).hexdigest()))
        except Exception as exc:  # noqa: BLE001  (collected and asserted below)
            errors.append(exc)

    threads = [threading.Thread(target=in_thread) for _ in range(4)]
    time.sleep(1.0)  # let the children import and connect
    go.touch()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for p in procs:
        out, err = p.communicate(timeout=HUNG_AFTER_S)
        assert p.returncode == 0, err
        path, sha = out.split()
        results.append((path, sha))
    assert not errors
    assert set(results) == {(store.cache.path(digest), digest)}
    assert moto_server.requests("GET", store.key(digest)) == 1  # one download for 9 callers
    assert os.listdir(store.cache.tmp) == []


def test_age_touch_and_clean_temp(store, moto_server):
    # Ages are in whole seconds (HTTP dates, truncated) on moto's clock, which is this machine's: an
    # age is bracketed by time.time() around the calls, however long moto at nice 19 takes to answer.
    put_at = time.time()
    digest = store.put(blob(1000, 50))
    assert 0 <= store.age_s(digest) <= time.time() - put_at + 1
    time.sleep(4.1)
    assert store.age_s(digest) >= 4
    touched_at = time.time()
    store.touch(digest)  # LastModified moves to now: gc's grace period starts again
    bucket, prefix = parse_s3_url(store.url)
    raw = moto_server.client()
    assert raw.head_object(Bucket=bucket, Key=store.key(digest))["LastModified"].timestamp() >= int(touched_at)
    assert store.age_s(digest) <= time.time() - touched_at + 1
    assert store.age_s("0" * 64) == 0.0  # gone: nothing for gc to delete
    store.touch("0" * 64)  # touching a missing blob is a no-op, as in the local store

    raw.create_multipart_upload(Bucket=bucket, Key=f"{prefix}/blobs/big")
    raw.create_multipart_upload(Bucket=bucket, Key="elsewhere/big")
    assert store.clean_temp(grace_s=0) == 1
    keys = [u["Key"] for u in raw.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    assert keys == ["elsewhere/big"]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_endpoint_down_is_a_clear_error(s3_url, tmp_path, monkeypatch):
    store = S3BlobStore(s3_url, str(tmp_path / "c"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(BlobStoreUnavailable, match=rf"{s3_url} \(endpoint http://127.0.0.1:\d+\): checking the "
                                                     r"bucket: cannot connect") as err:
        S3BlobStore(s3_url, str(tmp_path / "c"))
    assert "testing" not in str(err.value)  # the secret key never shows
    down = S3BlobStore(s3_url, str(tmp_path / "c"), check=False)
    with pytest.raises(BlobStoreUnavailable, match="reading blob .*: cannot connect"):
        down.local_path("ab" * 32)
    assert store.exists("ab" * 32) is False  # the first store keeps its own client and endpoint


def test_missing_bucket_is_a_clear_error(moto_server, tmp_path):
    with pytest.raises(BlobStoreUnavailable, match="s3://mint-no-such-bucket/cat .*bucket 'mint-no-such-bucket' "
                                                   "does not exist"):
        S3BlobStore("s3://mint-no-such-bucket/cat", str(tmp_path / "c"))
    store = S3BlobStore("s3://mint-no-such-bucket/cat", str(tmp_path / "c"), check=False)
    with pytest.raises(BlobStoreUnavailable, match="writing blob .*does not exist"):
        store.put(b"x")


def test_missing_credentials_is_a_clear_error(s3_url, tmp_path, monkeypatch):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(BlobStoreUnavailable, match=f"{s3_url} .*no AWS credentials found"):
        S3BlobStore(s3_url, str(tmp_path / "c"))


def test_clients_share_one_loader_of_botocore_models(s3_url, tmp_path, monkeypatch):
    """Each catalog opened builds a client; the service models are parsed once per process, while
    credentials are still read per client (a second client sees the environment as it is now)."""
    first = S3BlobStore(s3_url, str(tmp_path / "a"))
    second = S3BlobStore(s3_url, str(tmp_path / "b"))
    assert first.client is not second.client
    assert first.client._loader is second.client._loader
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "another-key")
    third = S3BlobStore(s3_url, str(tmp_path / "c"))
    assert third.client._request_signer._credentials.access_key == "another-key"
    assert first.client._request_signer._credentials.access_key != "another-key"
