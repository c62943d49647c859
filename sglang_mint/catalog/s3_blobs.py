"""Content-addressed blobs in an S3-compatible object store (AWS S3, MinIO, moto).

``S3BlobStore("s3://adapters/prod", cache_dir="/var/cache/mint")`` keeps blob
``41ab...e9`` at ``s3://adapters/prod/blobs/41/41ab...e9``, the same naming as the
local store's ``blobs/41/41ab...e9``. The endpoint and credentials come from boto3's
standard chain: ``AWS_ENDPOINT_URL=http://127.0.0.1:9000`` for MinIO or moto,
``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` or a profile or an instance role.

How the store keeps the atomicity contract of store.py:

- durable on return: a PutObject answers only once S3 has stored the object, so
  ``put`` is durable with or without ``sync`` and ``sync()`` has nothing to do. An
  object appears whole or not at all: there is no partial write to clean up.
- the bytes S3 keeps are the bytes hashed: each PutObject carries ``ChecksumSHA256``
  (the digest itself, base64), which S3 and MinIO verify before storing.
- gc's grace period: ``age_s`` is the object's LastModified, measured against the
  server's own clock (its ``Date`` header), so a skewed engine clock cannot shorten
  it. ``touch`` copies the object onto itself, which moves LastModified to now:
  ``synth`` puts blobs outside the metadata write lock and commits later, and a put
  that finds an old orphan with the same bytes must make it young again or gc could
  take it before that commit. (On a versioned bucket each touch keeps a noncurrent
  version: add a lifecycle rule that expires them, or use an unversioned bucket.)

Engines read blobs through ``local_path``: a verified download into a bounded local
disk cache (blob_cache.py), fetched once per engine and then served from disk.
"""

from __future__ import annotations

import base64
import contextlib
import email.utils
import hashlib
import os
import threading
import time
import urllib.parse
from typing import Iterator

from sglang_mint.catalog.blob_cache import DIGEST, BlobCache, check_digest
from sglang_mint.catalog.errors import BlobMissing, BlobStoreUnavailable, CatalogError
from sglang_mint.catalog.store import BlobStore

CHUNK = 1 << 20  # download in 1 MiB pieces: hashed and written as they arrive
_MISSING_KEY = {"404", "NoSuchKey", "NotFound"}
_DENIED = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"}


def parse_s3_url(url: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ("bucket", "some/prefix"); the prefix may be empty."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise CatalogError(f"{url!r} is not an S3 blob URL; expected s3://bucket/prefix")
    return parts.netloc, parts.path.strip("/")


_LOADER = None  # botocore's loader of its service models, shared by every session of the process
_LOADER_LOCK = threading.Lock()


def boto3_session():
    """A fresh boto3 session (credentials and region read from the environment now) whose botocore
    loader is the process's one: building a client parses botocore's JSON service models, about
    60 ms each time with a loader of its own, 8 ms with a warm shared one (the models never change)."""
    global _LOADER
    import boto3
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if _LOADER is None:
            _LOADER = botocore.loaders.create_loader()
    session = botocore.session.get_session()
    session.register_component("data_loader", _LOADER)
    return boto3.session.Session(botocore_session=session)


class S3BlobStore(BlobStore):
    def __init__(self, url: str, cache_dir: str, cache_bytes: int = 10 * 2**30, *,
                 check: bool = True, keep_recent_s: float = 60.0):
        """``check`` asks the bucket once now, so a missing bucket or bad credentials
        fail at open time instead of at the first request."""
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"
        self.cache = BlobCache(cache_dir, cache_bytes, keep_recent_s=keep_recent_s)
        self._client_lock = threading.Lock()
        self._client_pid = -1
        self._client = None
        if check:
            with self._talking("checking the bucket"):
                self.client.head_bucket(Bucket=self.bucket)

    # -- plumbing -------------------------------------------------------------
    @property
    def client(self):
        """One boto3 client per process (clients are thread-safe, but a forked child must
        not share its parent's open connections)."""
        if self._client_pid != os.getpid():
            with self._client_lock:
                if self._client_pid != os.getpid():
                    try:
                        from botocore.config import Config

                        session = boto3_session()
                    except ImportError:
                        raise CatalogError(f"the blob store {self.url} needs boto3, which is not installed "
                                           "(pip install -r requirements.lock)") from None

                    config = Config(retries={"mode": "standard"}, connect_timeout=5, read_timeout=60,
                                    max_pool_connections=32)
                    self._client = session.client("s3", config=config)
                    self._client_pid = os.getpid()
        return self._client

    @property
    def where(self) -> str:
        """The store as error messages name it: URL and endpoint, with any user:password removed."""
        endpoint = urllib.parse.urlsplit(self.client.meta.endpoint_url)
        host = endpoint.hostname or ""
        if endpoint.port:
            host += f":{endpoint.port}"
        return f"{self.url} (endpoint {endpoint.scheme}://{host})"

    def key(self, digest: str) -> str:
        check_digest(digest)
        return f"{self.prefix}/blobs/{digest[:2]}/{digest}" if self.prefix else f"blobs/{digest[:2]}/{digest}"

    @contextlib.contextmanager
    def _talking(self, action: str, digest: str | None = None):
        """Turn boto errors into catalog errors that say what failed where, e.g.
        ``s3://adapters/prod (endpoint http://127.0.0.1:9000): reading blob 41ab...: cannot connect``."""
        from botocore.exceptions import (BotoCoreError, ClientError, ConnectionError as BotoConnectionError,
                                         NoCredentialsError, PartialCredentialsError)

        try:
            yield
        except ClientError as exc:
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            if digest is not None and code in _MISSING_KEY:
                raise BlobMissing(f"blob {digest} is missing from {self.url}") from None
            if code == "NoSuchBucket" or (digest is None and code in _MISSING_KEY):
                problem = f"bucket {self.bucket!r} does not exist"
            elif code in _DENIED:
                problem = f"access denied ({code}): check the credentials and the bucket policy"
            else:
                problem = f"{code}: {err.get('Message', exc)}"
            raise BlobStoreUnavailable(f"{self.where}: {action}: {problem}") from None
        except (NoCredentialsError, PartialCredentialsError):
            raise BlobStoreUnavailable(
                f"{self.where}: {action}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
                f"AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or give the machine a role)") from None
        except BotoConnectionError as exc:
            raise BlobStoreUnavailable(f"{self.where}: {action}: cannot connect ({type(exc).__name__})") from None
        except BotoCoreError as exc:
            raise BlobStoreUnavailable(f"{self.where}: {action}: {exc}") from None

    def _head(self, digest: str) -> dict | None:
        """The object's headers, or None if it does not exist."""
        try:
            with self._talking(f"looking up blob {digest}", digest):
                return self.client.head_object(Bucket=self.bucket, Key=self.key(digest))
        except BlobMissing:
            return None

    # -- BlobStore --------------------------------------------------------------
    def put(self, data: bytes, sync: bool = True) -> str:
        digest = hashlib.sha256(data).hexdigest()
        if self.exists(digest):
            self.touch(digest)  # an old orphan with these bytes must not age out before its commit
            return digest
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        with self._talking(f"writing blob {digest}"):
            self.client.put_object(Bucket=self.bucket, Key=self.key(digest), Body=data, ChecksumSHA256=checksum)
        return digest

    def put_file(self, path: str, digest: str, sync: bool = True) -> str:
        if self.exists(digest):
            self.touch(digest)
            return digest
        checksum = base64.b64encode(bytes.fromhex(digest)).decode()
        with self._talking(f"writing blob {digest}"), open(path, "rb") as body:
            # A file body is streamed in chunks; S3 checks it against the sha256 we computed.
            self.client.put_object(Bucket=self.bucket, Key=self.key(digest), Body=body, ChecksumSHA256=checksum)
        return digest

    def sync(self) -> None:
        """Nothing to do: every put was durable when PutObject answered."""

    def exists(self, digest: str) -> bool:
        return self._head(digest) is not None

    def touch(self, digest: str) -> None:
        """Move the object's LastModified to now (a server-side copy onto itself; no bytes
        travel). Missing blobs are ignored, as in the local store."""
        key = self.key(digest)
        try:
            with self._talking(f"touching blob {digest}", digest):
                self.client.copy_object(Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": key},
                                        MetadataDirective="REPLACE", Metadata={"mint-touched": repr(time.time())})
        except BlobMissing:
            pass

    def read(self, digest: str) -> bytes:
        """The store's own bytes (not the cache's): what verify re-hashes."""
        with self._talking(f"reading blob {digest}", digest):
            return self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"].read()

    def is_local(self, digest: str) -> bool:
        return os.path.exists(self.cache.path(check_digest(digest)))

    def local_path(self, digest: str) -> str:
        """A local file with the blob's bytes: from the disk cache, or downloaded,
        verified against the digest and cached (BlobMissing if absent or corrupt)."""
        return self.cache.fetch(check_digest(digest), lambda: self._chunks(digest), self.url)

    def _chunks(self, digest: str) -> Iterator[bytes]:
        with self._talking(f"reading blob {digest}", digest):
            body = self.client.get_object(Bucket=self.bucket, Key=self.key(digest))["Body"]
            try:
                yield from body.iter_chunks(CHUNK)
            finally:
                body.close()

    def size(self, digest: str) -> int:
        """The blob's size in bytes (0 if it is gone): what gc reports as freed."""
        head = self._head(digest)
        return int(head["ContentLength"]) if head is not None else 0

    def iter_digests(self) -> Iterator[str]:
        """Every blob's digest in digest order: ListObjectsV2 returns keys in byte order,
        and ``blobs/41/41ab...`` sorts as its digest does. 1,000 keys per request."""
        start = f"{self.prefix}/blobs/" if self.prefix else "blobs/"
        with self._talking("listing blobs"):
            for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=start):
                for obj in page.get("Contents", ()):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if DIGEST.fullmatch(name) and obj["Key"] == self.key(name):  # skip stray keys
                        yield name

    def age_s(self, digest: str) -> float:
        """Seconds since the object was written or touched, on the server's clock. A blob
        that is gone has age 0: gc then skips it, and there is nothing left to delete."""
        head = self._head(digest)
        if head is None:
            return 0.0
        server_now = email.utils.parsedate_to_datetime(head["ResponseMetadata"]["HTTPHeaders"]["date"])
        return max(0.0, (server_now - head["LastModified"]).total_seconds())

    def delete(self, digest: str) -> None:
        """Remove the object (deleting an absent key succeeds). The engines' caches keep
        their copies until evicted: gc deletes only blobs no revision references."""
        with self._talking(f"deleting blob {digest}"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(digest))

    def clean_temp(self, grace_s: float) -> int:
        """Abort multipart uploads under the prefix started more than ``grace_s`` ago.

        ``put`` uses single PutObjects (up to 5 GiB), which leave nothing partial behind;
        this reclaims uploads that other tools (``aws s3 cp`` of a large file) left unfinished,
        whose parts S3 keeps, and bills, until aborted."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        n, now = 0, time.time()
        with self._talking("cleaning unfinished uploads"):
            for page in self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket,
                                                                                      Prefix=prefix):
                for up in page.get("Uploads", ()):
                    if now - up["Initiated"].timestamp() >= grace_s:
                        self.client.abort_multipart_upload(Bucket=self.bucket, Key=up["Key"], UploadId=up["UploadId"])
                        n += 1
        return n
