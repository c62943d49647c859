"""Requests per adapter over several engines' ledgers (usage/engines.py): a folder shared by
engines is counted once, separate folders are summed, a partial overlap is refused."""

from __future__ import annotations

import json
import time

import pytest
from loopback_stub import loopback_stub

from sglang_mint.cli import main as cli_main
from sglang_mint.errors import MintError
from sglang_mint.gateway.smg import requests_from_engines
from sglang_mint.usage.engines import merge_ledgers
from sglang_mint.usage.ledger import UsageLedger, parse_moment, read_ledger

T0 = parse_moment("2026-12-05T04:17:10Z")


def write(folder, engine: str, requests: dict[str, int], at: float = T0) -> None:
    ledger = UsageLedger(folder, engine, flush_s=3600, clock=lambda: at)
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
    """A loopback stand-in for an engine answering every request 403 in OpenAI's error shape."""
    def refuse(method, path, body):
        return 403, {"error": {"message": "admin endpoint: this caller is not on the server's machine",
                               "type": "permission_error"}}

    with loopback_stub(refuse) as url:
        yield url


def test_a_refusal_names_the_engine_and_the_fix_and_an_unreachable_engine_is_reported(refusing_engine):
    with pytest.raises(MintError, match=r"127\.0\.0\.1:\d+/mint/usage answered 403: admin endpoint.*"
                                        r"pass the engines' --admin-api-key"):
        requests_from_engines([refusing_engine], since=T0)
    closed = "http://127.0.0.1:9"  # discard: nothing listens here
    assert requests_from_engines([closed], since=T0, timeout=5) == ({}, [closed])


def test_rebalance_from_engines_places_on_the_engines_it_counted(tmp_path, capsys):
    """``mint gateway rebalance --usage-from-engines`` reads SMG's workers once: the engines whose
    ledgers it counted are the engines it places on, even if SMG's list changes meanwhile."""
    write(tmp_path / "a", "e1", {"acme/a": 4, "acme/b": 1}, at=time.time())
    write(tmp_path / "b", "e2", {"acme/c": 2}, at=time.time())
    workers_reads = []

    def engine(folder):
        return lambda method, path, body: (200, answer(folder)) if path.startswith("/mint/usage") else (404, b"")

    with loopback_stub(engine(tmp_path / "a")) as one, loopback_stub(engine(tmp_path / "b")) as two:
        def smg(method, path, body):
            if path != "/workers":
                return 404, b""
            workers_reads.append(path)  # a second read would see engine two unhealthy
            return 200, {"workers": [{"url": one, "is_healthy": True},
                                     {"url": two, "is_healthy": len(workers_reads) == 1}]}

        with loopback_stub(smg) as gateway:
            assert cli_main(["gateway", "rebalance", "--gateway", gateway, "--base-model", "tiny",
                             "--usage-from-engines", "--dry-run"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert workers_reads == ["/workers"]
    assert plan["requests_counted"] == 7 and plan["usage_unread"] == []
    assert sorted(plan["planned_load"]) == sorted([one, two]), plan  # both counted, so both placed on


def test_a_mistyped_option_of_mint_usage_is_reported_by_mint_usage(tmp_path, capsys):
    """`mint usage --usage-dir X` (the flag is --dir) printed the top-level `usage: mint [-h] COMMAND ...`."""
    with pytest.raises(SystemExit) as exc:
        cli_main(["usage", "--usage-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("usage: mint usage [-h] [--dir DIR]"), err
    assert "mint usage: error: unrecognized arguments: --usage-dir" in err, err
