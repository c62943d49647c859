"""A real PostgreSQL server for the tests: Debian's binaries, a throwaway cluster, loopback only
(sglang_mint/dev/pg_server.py starts it).

``postgres_server`` (session) is a PostgresServer on a free 127.0.0.1 port with fsync on,
stopped (and its folder deleted) at the end. The superuser has a password, so a URL
carries one (``postgresql://postgres:<pw>@127.0.0.1:54xxx/postgres``) and tests can
check that it never shows up in messages: ``postgres_server.password``.

``pg_url`` (per test) is a fresh, empty database on that server, e.g.
``postgresql://postgres:<pw>@127.0.0.1:54xxx/t_3f2a...``, dropped afterwards.
"""

from __future__ import annotations

import uuid

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.dev.pg_server import PostgresServer

__all__ = ["postgres_server", "pg_url"]


@pytest.fixture(scope="session")
def postgres_server():
    server = PostgresServer().start(timeout_s=HUNG_AFTER_S)  # the fast lane's nice 19: starved, not hung
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(postgres_server):
    """A fresh empty database on the session's server; its URL carries the password."""
    db = "t_" + uuid.uuid4().hex[:16]
    url = postgres_server.create_database(db)
    yield url
    postgres_server.admin(f"DROP DATABASE {db} WITH (FORCE)")
