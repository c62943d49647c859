"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster, loopback only.

``postgres_server`` (session) runs ``initdb`` into a fresh folder under /tmp as
the ``postgres`` user (initdb refuses root; ``runuser -u postgres --`` when the
tests run as root), starts the server on a free 127.0.0.1 port with fsync on,
and stops it at the end. The superuser has a password, so a URL carries one
(``postgresql://postgres:<pw>@127.0.0.1:54xxx/postgres``) and tests can check
that it never shows up in messages.

``pg_url`` (per test) is a fresh, empty database on that server, e.g.
``postgresql://postgres:<pw>@127.0.0.1:54xxx/t_3f2a...``, dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid

import pytest

PASSWORD = "mint-test-" + uuid.uuid4().hex[:12]


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (run `make setup`, which installs postgresql)")
    return found[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """One cluster in ``root`` (owned by the postgres user when we are root)."""

    def __init__(self):
        self.root = tempfile.mkdtemp(prefix="mint-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = _free_port()
        self.password = PASSWORD
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.root, "postgres", "postgres")

    def _run(self, *cmd: str) -> None:
        p = subprocess.run([*self.as_postgres, *cmd], capture_output=True, text=True, timeout=120)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")

    def start(self) -> "PostgresServer":
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
                  "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8")
        os.unlink(pwfile)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=on "
                "-c max_connections=200 -c shared_buffers=128MB")
        self._run(pg_bin("pg_ctl"), "-D", self.data, "-l", os.path.join(self.root, "log"), "-o", opts, "-w",
                  "-t", "60", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{PASSWORD}@127.0.0.1:{self.port}/{db}"

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(sql)

    def stop(self) -> None:
        try:
            self._run(pg_bin("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start()
    yield server
    server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """A fresh empty database on the session's server; its URL carries the password."""
    db = "t_" + uuid.uuid4().hex[:16]
    postgres_server.admin(f"CREATE DATABASE {db}")
    yield postgres_server.url(db)
    postgres_server.admin(f"DROP DATABASE {db} WITH (FORCE)")
