"""A real S3-compatible server for the tests: moto's standalone server on loopback
(sglang_mint/dev/s3_server.py starts it).

``moto_server`` (session) starts it on a free 127.0.0.1 port and points boto3 at it for
the whole session through the standard environment (``AWS_ENDPOINT_URL=http://127.0.0.1:5xxxx``,
``AWS_ACCESS_KEY_ID=testing``, ...), so child processes (engines, workers) inherit it.
``moto_server.requests("GET", key)`` counts the requests that reached it.

``s3_url`` (per test) is a fresh bucket on that server: ``s3://mint-3f2a.../catalog``.
"""

from __future__ import annotations

import os
import uuid

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.dev.s3_server import S3Server

__all__ = ["moto_server", "s3_url"]


@pytest.fixture(scope="session")
def moto_server():
    """The session's S3Server; the AWS_* variables point at it until the session ends."""
    server = S3Server().start(timeout_s=HUNG_AFTER_S)  # the fast lane's nice 19: starved, not hung
    saved = {k: os.environ.get(k) for k in server.env()}
    os.environ.update(server.env())
    try:
        yield server
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        server.stop()


@pytest.fixture
def s3_url(moto_server):
    """A fresh bucket on the session's server: ``s3://mint-<random>/catalog``."""
    bucket = "mint-" + uuid.uuid4().hex[:16]
    moto_server.client().create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/catalog"
