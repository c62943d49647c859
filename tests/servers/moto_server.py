"""A real S3-compatible server for the tests: moto's standalone server, loopback only.

``moto_server`` (session) starts ``python -m moto.server`` on a free 127.0.0.1 port,
waits until it answers, and points boto3 at it for the whole session through the
standard environment (``AWS_ENDPOINT_URL=http://127.0.0.1:5xxxx``,
``AWS_ACCESS_KEY_ID=testing``, ...), so child processes (engines, workers) inherit it.
Its request log (one line per HTTP request, e.g.
``"GET /mint-3f2a.../catalog/blobs/41/41ab... HTTP/1.1" 200``) is kept, so a test can
count the requests that reached the server: ``moto_server.requests("GET", key)``.

``s3_url`` (per test) is a fresh bucket on that server: ``s3://mint-3f2a.../catalog``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest

__all__ = ["MotoServer", "moto_server", "s3_url"]

ENV = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MotoServer:
    def __init__(self):
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log_path = tempfile.mktemp(prefix="mint-moto-", suffix=".log")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "MotoServer":
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                return self
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"moto server did not start on {self.endpoint}:\n{self.log()}")
                time.sleep(0.1)

    def log(self) -> str:
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def requests(self, method: str, path_part: str) -> int:
        """How many ``method`` requests whose path contains ``path_part`` the server has logged."""
        return sum(1 for line in self.log().splitlines() if f'"{method} ' in line and path_part in line)

    def client(self):
        import boto3

        return boto3.session.Session().client("s3", endpoint_url=self.endpoint, **_boto_kwargs())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)


def _boto_kwargs() -> dict:
    return {"aws_access_key_id": ENV["AWS_ACCESS_KEY_ID"], "aws_secret_access_key": ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": ENV["AWS_DEFAULT_REGION"]}


@pytest.fixture(scope="session")
def moto_server():
    server = MotoServer().start()
    env = {**ENV, "AWS_ENDPOINT_URL": server.endpoint}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
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
