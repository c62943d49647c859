"""Start and stop a real S3-compatible server on loopback for tests, benchmarks and a dev cluster.

    with S3Server() as s3:                       # moto's standalone server, 127.0.0.1:<free port>
        os.environ.update(s3.env())              # AWS_ENDPOINT_URL=http://127.0.0.1:5xxxx, test keys
        s3.client().create_bucket(Bucket="mint-adapters")
        store = S3BlobStore("s3://mint-adapters/catalog", cache_dir="/tmp/cache")

It runs ``python -m moto.server`` (the ``moto[server]`` package) and keeps its request
log, one line per HTTP request, e.g.
``"GET /mint-adapters/catalog/blobs/41/41ab... HTTP/1.1" 200``, so callers can count
what reached the server: ``s3.requests("GET", key)``. Objects live in the server's
memory and vanish when it stops (``sglang_mint.process.ManagedProcess``: SIGTERM to its
process group, SIGKILL 10 s later), and so does the log. Production uses S3 or MinIO with
the same variables.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

from sglang_mint.ports import free_port
from sglang_mint.process import ManagedProcess, ProcessFailed

TEST_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1"}


class S3Server:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="mint-s3-", suffix=".log")
        os.close(fd)
        self.process = ManagedProcess([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                      name=f"the S3 server (moto) on {self.endpoint}", log_path=self.log_path)

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process.proc

    def env(self) -> dict[str, str]:
        """The standard variables that point boto3 (and child processes) at this server."""
        return {**TEST_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout_s: float = 60.0) -> "S3Server":
        try:
            self.process.start(ready=f"{self.endpoint}/moto-api/", timeout=timeout_s, poll=0.1)
        except ProcessFailed:
            self.stop()  # the message holds the log's tail
            raise
        return self

    def log(self) -> str:
        return self.process.log_text()

    def requests(self, method: str, path_part: str) -> int:
        """How many ``method`` requests whose path contains ``path_part`` the server has logged."""
        return sum(1 for line in self.log().splitlines() if f'"{method} ' in line and path_part in line)

    def client(self):
        """A boto3 S3 client for this server that does not depend on the environment."""
        from sglang_mint.catalog.s3_blobs import boto3_session

        c = TEST_CREDENTIALS
        return boto3_session().client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=c["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=c["AWS_SECRET_ACCESS_KEY"], region_name=c["AWS_DEFAULT_REGION"])

    def stop(self) -> None:
        self.process.stop(timeout=10)
        if os.path.exists(self.log_path):
            os.unlink(self.log_path)

    def __enter__(self) -> "S3Server":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
