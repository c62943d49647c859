"""Secrets stay secret (issue 19, item 6): a percent-encoded password is redacted in both of its
spellings, and the files `mint cluster up` writes for other shells are private from the moment
they exist (created with mode 0600, never widened first and narrowed after)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sglang_mint.catalog.location import parse_location, redact, without_password

URL = "postgresql://mint:p%40ss%3Aw%2Frd@db.internal:5432/catalog"  # the password is p@ss:w/rd


def test_redact_hides_a_percent_encoded_password_in_both_spellings():
    driver = 'connection to server at "db.internal" failed: password "p@ss:w/rd" rejected'
    echoed = f"cannot open {URL}"
    for text in (driver, echoed):
        shown = redact(text, URL)
        assert "p@ss" not in shown and "p%40ss" not in shown and "***" in shown, shown
    assert parse_location(URL).display == "postgresql://mint:***@db.internal:5432/catalog"
    assert without_password(URL) == "postgresql://mint@db.internal:5432/catalog"


def test_cluster_env_files_are_private_from_their_creation(tmp_path, monkeypatch):
    from sglang_mint.dev import cluster

    def widened_then_narrowed(*args, **kwargs):
        raise AssertionError("a secret file was chmod-ed after it was created: it was readable in between")

    monkeypatch.setattr(cluster, "run_dir", lambda: tmp_path)
    monkeypatch.setattr(os, "chmod", widened_then_narrowed)
    monkeypatch.setattr(os, "fchmod", widened_then_narrowed)
    monkeypatch.setattr(Path, "chmod", widened_then_narrowed)
    (tmp_path / "work").mkdir()
    old = os.umask(0)  # the most permissive umask: only the mode given at creation protects the files
    try:
        url = "postgresql://postgres:pw%3Awith%5Ccolon@127.0.0.1:54321/mint"
        bare, env = cluster._engine_secrets(url, {"AWS_SECRET_ACCESS_KEY": "s3cret"}, tmp_path / "work")
    finally:
        os.umask(old)
    assert bare == "postgresql://postgres@127.0.0.1:54321/mint" and env["AWS_SECRET_ACCESS_KEY"] == "s3cret"
    env = (tmp_path / "env").read_text()
    pgpass = Path(next(line.split("=", 1)[1] for line in env.splitlines() if "PGPASSFILE=" in line))
    for path in (tmp_path / "env", pgpass):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (path, oct(path.stat().st_mode))
    # libpq's format: host:port:db:user:password, with ':' and '\' escaped
    assert pgpass.read_text() == "127.0.0.1:54321:*:postgres:pw\\:with\\\\colon\n"


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__]))
