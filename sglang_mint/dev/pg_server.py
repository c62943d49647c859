"""Start and stop a real PostgreSQL server on loopback for tests, benchmarks and a dev cluster.

    with PostgresServer() as pg:                 # initdb + pg_ctl start, 127.0.0.1:<free port>
        url = pg.create_database("mint")         # postgresql://postgres:<pw>@127.0.0.1:54xxx/mint
        cat = init_catalog(url, base, blobs="s3://mint-adapters/catalog")

It uses Debian's binaries (``/usr/lib/postgresql/<version>/bin``, the ``postgresql``
package) and a throwaway cluster in a fresh folder under /tmp: ``initdb`` runs as the
``postgres`` user when we are root (initdb refuses root; ``runuser -u postgres --``),
the server listens on 127.0.0.1 only, with fsync on as in production. The superuser
has a random password, so a URL carries one and callers can check that it never
shows up in messages.

``postgres`` itself runs in the foreground as a ``sglang_mint.process.ManagedProcess``
(as the ``postgres`` user when we are root), ready once ``pg_isready`` says it accepts
connections. ``stop()`` sends SIGQUIT to its process group (PostgreSQL's immediate
shutdown, what ``pg_ctl stop -m immediate`` sends; SIGKILL to the group 10 s later)
and deletes the folder: the data goes with it.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import subprocess
import tempfile
import uuid

from sglang_mint.ports import free_port
from sglang_mint.process import ManagedProcess


def pg_bin(name: str) -> str:
    """The newest installed PostgreSQL's ``name``, e.g. /usr/lib/postgresql/16/bin/initdb."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (run `make setup`, which installs postgresql)")
    return found[-1]


class PostgresServer:
    """One cluster in ``root`` (owned by the postgres user when we are root)."""

    def __init__(self, port: int | None = None, password: str | None = None):
        self.port = port or free_port()
        self.password = password or "mint-" + uuid.uuid4().hex[:12]
        self.root: str | None = None
        self.data: str | None = None
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self.process: ManagedProcess | None = None
        self.running = False

    def _run(self, *cmd: str, timeout_s: float = 120.0) -> None:
        p = subprocess.run([*self.as_postgres, *cmd], capture_output=True, text=True, timeout=timeout_s,
                           stdin=subprocess.DEVNULL)
        if p.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")

    def start(self, timeout_s: float = 60.0) -> "PostgresServer":
        """initdb, then the server; each may take ``timeout_s`` (initdb at least 120 s)."""
        self.root = tempfile.mkdtemp(prefix="mint-pg-")
        self.data = os.path.join(self.root, "data")
        try:
            if self.as_postgres:
                shutil.chown(self.root, "postgres", "postgres")
            pwfile = os.path.join(self.root, "pw")
            with open(pwfile, "w") as f:
                f.write(self.password + "\n")
            if self.as_postgres:
                shutil.chown(pwfile, "postgres", "postgres")
            self._run(pg_bin("initdb"), "-D", self.data, "-U", "postgres", "--pwfile", pwfile,
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8",
                      timeout_s=max(120.0, timeout_s))
            os.unlink(pwfile)
            # -k: the Unix socket goes in our folder, not /var/run/postgresql (absent or another server's)
            self.process = ManagedProcess(
                [pg_bin("postgres"), "-D", self.data, "-c", "listen_addresses=127.0.0.1", "-p", str(self.port),
                 "-k", self.root, "-c", "fsync=on", "-c", "max_connections=200", "-c", "shared_buffers=128MB"],
                name="postgres", log_path=self.log_path, user="postgres" if self.as_postgres else None,
                stop_signal=signal.SIGQUIT)
            self.running = True
            self.process.start(ready=self._accepting, timeout=timeout_s, poll=0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def _accepting(self) -> bool:
        return subprocess.run([pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(self.port), "-t", "2"],
                              stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "log")

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{db}"

    def admin(self, sql: str) -> None:
        """Run one statement as the superuser in the ``postgres`` database (autocommit)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(sql)

    def create_database(self, name: str) -> str:
        """CREATE DATABASE ``name`` (letters, digits, _) and return its URL."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"database name {name!r}: use letters, digits and _")
        self.admin(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        """Stop the server (immediate: the data is thrown away) and delete its folder."""
        try:
            if self.running:
                self.running = False
                self.process.stop(timeout=10)
        finally:
            if self.root:
                shutil.rmtree(self.root, ignore_errors=True)
                self.root = None

    def __enter__(self) -> "PostgresServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
