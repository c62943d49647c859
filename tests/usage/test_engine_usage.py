"""Requests per adapter over several engines' ledgers (usage/engines.py): a folder shared by
engines is counted once, separate folders are summed, a partial overlap is refused."""

from __future__ import annotations

import http.server
import json
import threading

import pytest

from sglang_mint.errors import MintError
from sglang_mint.gateway.smg import requests_from_engines
from sglang_mint.usage.engines import merge_ledgers
from sglang_mint.usage.ledger import UsageLedger, parse_moment, read_ledger

T0 = parse_moment("2026-12-05T04:17:10Z")


def write(folder, engine: str, requests: dict[str, int]) -> None:
    ledger = UsageLedger(folder, engine, flush_s=3600, clock=lambda: T0)
    for adapter, n in requests.items():
        for _ in range(n):
            ledger.record(adapter, 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    ledger.close()


def answer(folder) -> dict:
    """What GET /mint/usage?by=adapter answers for a server writing to ``folder``."""
    rows, engines = read_ledger(folder, per_minute=False)
    return {"usage": rows, "engines": engines}


def test_a_shared_folder_is_counted_once_and_separate_folders_are_summed(tmp_path):
    shared, own = tmp_path / "shared", tmp_path / "own"
    write(shared, "10.0.0.1:30000/dp0", {"a": 3, "b": 1})
    write(shared, "10.0.0.1:30001/dp0", {"a": 2})
    write(own, "10.0.0.2:30000/dp0", {"b": 5, "c": 1})
    assert read_ledger(shared)[1] == ["10.0.0.1_30000_dp0", "10.0.0.1_30001_dp0"]
    answers = {"http://10.0.0.1:30000": answer(shared), "http://10.0.0.1:30001": answer(shared),
               "http://10.0.0.2:30000": answer(own)}
    assert merge_ledgers(answers) == {"a": 5, "b": 6, "c": 1}
    # without the engines named, the shared folder would have been counted twice
    assert sum(r["requests"] for a in answers.values() for r in a["usage"]) == 18 != 12


def test_folders_sharing_only_some_engines_are_refused(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    write(one, "e1", {"a": 1})
    write(one, "e2", {"a": 1})
    write(two, "e2", {"a": 1})
    with pytest.raises(MintError, match=r"read ledger files of the same engines \(e2\)"):
        merge_ledgers({"http://x:1": answer(one), "http://y:1": answer(two)})


def test_an_empty_ledger_adds_nothing(tmp_path):
    write(tmp_path / "a", "e1", {"a": 2})
    (tmp_path / "empty").mkdir()
    assert merge_ledgers({"u1": answer(tmp_path / "empty"), "u2": answer(tmp_path / "a"),
                          "u3": answer(tmp_path / "empty")}) == {"a": 2}


@pytest.fixture
def refusing_engine():
    """A loopback HTTP server answering every request 403 in OpenAI's error shape."""
    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = json.dumps({"error": {"message": "admin endpoint: this caller is not on the server's machine",
                                         "type": "permission_error"}}).encode()
            self.send_response(403)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_refusal_names_the_engine_and_the_fix_and_an_unreachable_engine_is_reported(refusing_engine):
    with pytest.raises(MintError, match=r"127\.0\.0\.1:\d+/mint/usage answered 403: admin endpoint.*"
                                        r"pass the engines' --admin-api-key"):
        requests_from_engines([refusing_engine], since=T0)
    closed = "http://127.0.0.1:9"  # discard: nothing listens here
    assert requests_from_engines([closed], since=T0, timeout=5) == ({}, [closed])
