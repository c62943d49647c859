"""The usage ledger: counts per (adapter, revision, minute), appended as deltas and summed on read."""

from __future__ import annotations

import json
import threading

import pytest

from sglang_mint.errors import MintError
from sglang_mint.usage.ledger import (FIELDS, UsageLedger, engine_name, minute_text, parse_moment, read_usage,
                                      requests_by_adapter)

T0 = parse_moment("2026-12-05T04:17:10Z")


class Clock:
    def __init__(self, t: float):
        self.t = t

    def __call__(self) -> float:
        return self.t


def ledger(tmp_path, engine="127.0.0.1:30000/dp0", clock=None, **kw) -> UsageLedger:
    return UsageLedger(tmp_path, engine, flush_s=3600, clock=clock or Clock(T0), **kw)


def test_minutes_and_moments():
    assert minute_text(T0) == "2026-12-05T04:17:00Z"
    assert parse_moment("2026-12-05T04:17:10+00:00") == T0
    assert parse_moment("2026-12-05T04:17:10") == T0  # UTC unless it says
    assert parse_moment(str(T0)) == T0
    with pytest.raises(ValueError, match="'yesterday' is not a moment"):
        parse_moment("yesterday")
    with pytest.raises(ValueError, match=r"'xxxx+'\.\.\. \(100000 characters\) is not a moment") as bad:
        parse_moment("x" * 100_000)  # a query string's worth: named by its start, not echoed whole
    assert len(str(bad.value)) < 200


def test_deltas_from_flushes_and_engines_sum_to_one_row_per_minute(tmp_path):
    clock = Clock(T0)
    a, b = ledger(tmp_path, clock=clock), ledger(tmp_path, engine="127.0.0.1:30001/dp0", clock=clock)
    a.record("acme/bot", 3, prompt_tokens=10, cached_tokens=4, completion_tokens=5)
    assert a.flush() == 1
    a.record("acme/bot", 3, prompt_tokens=7, cached_tokens=0, completion_tokens=2, error=True)
    b.record("acme/bot", 3, prompt_tokens=1, cached_tokens=1, completion_tokens=1, cancelled=True)
    b.record(None, None, prompt_tokens=9, cached_tokens=0, completion_tokens=3)  # the base model
    clock.t += 60
    a.record("acme/bot", 4, prompt_tokens=2, cached_tokens=0, completion_tokens=2)
    assert a.flush() == 2 and b.flush() == 2 and a.flush() == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["usage-127.0.0.1_30000_dp0-2026120504.jsonl", "usage-127.0.0.1_30001_dp0-2026120504.jsonl"]
    assert len((tmp_path / files[0]).read_text().splitlines()) == 3  # deltas, not yet summed
    rows = read_usage(tmp_path)
    assert rows == [
        {"adapter": None, "revision": None, "minute": "2026-12-05T04:17:00Z", "requests": 1, "prompt_tokens": 9,
         "cached_tokens": 0, "completion_tokens": 3, "errors": 0, "cancelled": 0},
        {"adapter": "acme/bot", "revision": 3, "minute": "2026-12-05T04:17:00Z", "requests": 3,
         "prompt_tokens": 18, "cached_tokens": 5, "completion_tokens": 8, "errors": 1, "cancelled": 1},
        {"adapter": "acme/bot", "revision": 4, "minute": "2026-12-05T04:18:00Z", "requests": 1,
         "prompt_tokens": 2, "cached_tokens": 0, "completion_tokens": 2, "errors": 0, "cancelled": 0},
    ]
    assert [r["revision"] for r in read_usage(tmp_path, adapter="acme/bot")] == [3, 4]
    assert [r["minute"] for r in read_usage(tmp_path, since=T0 + 50)] == ["2026-12-05T04:18:00Z"]
    assert [r["adapter"] for r in read_usage(tmp_path, until=T0 + 50)] == [None, "acme/bot"]
    assert read_usage(tmp_path, adapter="acme/other") == []
    # the placement's rates: requests per adapter, revisions summed, the base model left out
    assert requests_by_adapter(tmp_path) == {"acme/bot": 4}
    assert requests_by_adapter(tmp_path, since=T0 + 50) == {"acme/bot": 1}


def test_a_line_cut_short_is_skipped_and_the_rest_is_read(tmp_path):
    one = ledger(tmp_path)
    one.record("a1", None, prompt_tokens=3, cached_tokens=0, completion_tokens=1)
    one.flush()
    [path] = tmp_path.iterdir()
    with open(path, "a") as f:
        f.write('{"adapter": "a1", "revis')  # a kill in the middle of a write
    assert [r["requests"] for r in read_usage(tmp_path)] == [1]


def test_counts_from_many_threads_are_all_kept(tmp_path):
    one = ledger(tmp_path)

    def work():
        for _ in range(1000):
            one.record("a1", 1, prompt_tokens=2, cached_tokens=1, completion_tokens=3)
            if _ % 97 == 0:
                one.flush()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    one.close()
    [row] = read_usage(tmp_path)
    assert [row[f] for f in FIELDS] == [4000, 8000, 4000, 12000, 0, 0]


def test_files_older_than_the_retention_go_as_the_hour_turns(tmp_path):
    old = tmp_path / "usage-e-2026110104.jsonl"
    old.write_text(json.dumps({"adapter": "a1", "revision": 1, "minute": "2026-11-01T04:00:00Z", "requests": 1}) + "\n")
    recent = tmp_path / "usage-e-2026120401.jsonl"
    recent.write_text("")
    one = ledger(tmp_path, keep_days=2)
    one.record("a1", 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    one.flush()
    assert not old.exists() and recent.exists()


def test_the_background_thread_flushes(tmp_path):
    one = UsageLedger(tmp_path, "e", flush_s=0.05)
    one.record("a1", 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    for _ in range(100):
        if read_usage(tmp_path):
            break
        threading.Event().wait(0.05)
    assert [r["requests"] for r in read_usage(tmp_path)] == [1]
    one.close()


def test_rows_per_adapter_over_the_span(tmp_path):
    clock = Clock(T0)
    one = ledger(tmp_path, clock=clock)
    one.record("a1", 1, prompt_tokens=2, cached_tokens=0, completion_tokens=1)
    clock.t += 120
    one.record("a1", 1, prompt_tokens=3, cached_tokens=1, completion_tokens=1)
    one.record("a2", None, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    one.record("a2", None, prompt_tokens=1, cached_tokens=0, completion_tokens=1, error=True)
    one.record("a2", None, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    one.flush()
    assert len(read_usage(tmp_path)) == 3  # per minute: a1 twice, a2 once
    assert read_usage(tmp_path, per_minute=False) == [
        {"adapter": "a2", "revision": None, "requests": 3, "prompt_tokens": 3, "cached_tokens": 0,
         "completion_tokens": 3, "errors": 1, "cancelled": 0},
        {"adapter": "a1", "revision": 1, "requests": 2, "prompt_tokens": 5, "cached_tokens": 1,
         "completion_tokens": 2, "errors": 0, "cancelled": 0},
    ]


def test_rows_written_before_cancelled_was_counted_read_as_none_cancelled(tmp_path):
    """Files appended by a server before ``cancelled`` existed (its hang-ups then counted as errors)."""
    line = {"adapter": "acme/bot", "revision": 3, "minute": "2026-12-05T04:17:00Z", "requests": 2,
            "prompt_tokens": 8, "cached_tokens": 0, "completion_tokens": 4, "errors": 1}
    (tmp_path / "usage-127.0.0.1_30000_dp0-2026120504.jsonl").write_text(json.dumps(line) + "\n")
    one = ledger(tmp_path, clock=Clock(T0))
    one.record("acme/bot", 3, prompt_tokens=1, cached_tokens=0, completion_tokens=1, cancelled=True)
    one.close()
    [row] = read_usage(tmp_path)
    assert (row["requests"], row["errors"], row["cancelled"]) == (3, 1, 1)


def test_the_engines_named_are_those_whose_rows_were_summed(tmp_path, monkeypatch):
    """An engine whose first file appears during a read: its rows and its name come together or not
    at all (two passes over the folder named it without its rows, and a gateway summing engines'
    answers by those names would count a folder's rows under the wrong engines)."""
    from pathlib import Path

    from sglang_mint.usage.ledger import read_ledger

    first = ledger(tmp_path)
    first.record("acme/bot", 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
    first.flush()
    read_text = Path.read_text

    def read_and_let_another_engine_start(path, *args, **kwargs):
        text = read_text(path, *args, **kwargs)
        late = ledger(tmp_path, engine="127.0.0.1:30001/dp0")
        late.record("acme/late", 1, prompt_tokens=1, cached_tokens=0, completion_tokens=1)
        late.flush()
        return text

    monkeypatch.setattr(Path, "read_text", read_and_let_another_engine_start)
    rows, engines = read_ledger(tmp_path)
    assert [r["adapter"] for r in rows] == ["acme/bot"] and engines == ["127.0.0.1_30000_dp0"]


def test_a_request_that_ends_as_the_hour_turns_is_in_that_hours_bill(tmp_path):
    """A row counts the minute its request ended; the flush after it may come in the next hour."""
    end = parse_moment("2026-12-05T04:59:59Z")
    clock = Clock(end)
    a = ledger(tmp_path, clock=clock)
    a.record("acme/bot", 1, prompt_tokens=3, cached_tokens=0, completion_tokens=1)
    clock.t = end + 2  # 05:00:01
    a.flush()
    hour = read_usage(tmp_path, since=parse_moment("2026-12-05T04:00:00Z"), until=parse_moment("2026-12-05T05:00:00Z"))
    assert [(r["minute"], r["requests"]) for r in hour] == [("2026-12-05T04:59:00Z", 1)]


def test_counts_a_failed_write_could_not_append_wait_for_the_next(tmp_path, monkeypatch):
    a = ledger(tmp_path)
    a.record("acme/bot", 1, prompt_tokens=3, cached_tokens=0, completion_tokens=1)
    real_open = open

    def full_disk(*args, **kw):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(OSError):
        a.flush()
    monkeypatch.setattr("builtins.open", real_open)
    a.record("acme/bot", 1, prompt_tokens=2, cached_tokens=0, completion_tokens=1)
    assert a.flush() == 1
    assert [(r["requests"], r["prompt_tokens"]) for r in read_usage(tmp_path)] == [(2, 5)]


def test_a_line_cut_short_does_not_take_the_next_flush_with_it(tmp_path):
    a = ledger(tmp_path)
    a.record("acme/bot", 1, prompt_tokens=3, cached_tokens=0, completion_tokens=1)
    a.flush()
    [path] = tmp_path.iterdir()
    with open(path, "a") as f:
        f.write('{"adapter": "acme/bot", "revi')  # a kill or a full disk mid-write
    a.record("acme/bot", 1, prompt_tokens=2, cached_tokens=0, completion_tokens=1)
    a.flush()
    assert [r["requests"] for r in read_usage(tmp_path)] == [2]


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_moment_must_be_finite(text):
    with pytest.raises(ValueError, match="is not a moment"):
        parse_moment(text)


def test_engines_on_two_machines_have_two_names():
    """Engines started from one configuration on two machines (the same --host and --port) write to
    a shared folder and answer GET /mint/usage under their own names: engines.merge_ledgers counts
    an answer whose names it has seen once, as a folder shared on one machine."""
    names = {engine_name("10.0.0.5", 30000, 0, machine=m) for m in ("gpu-a", "gpu-b")}
    assert len(names) == 2 and all(":30000/dp0" in n for n in names)


@pytest.mark.parametrize("value, seconds", [(None, None), ("", None), ("0.5", 0.5), ("3600", 3600.0)])
def test_the_flush_interval_comes_from_the_environment(monkeypatch, tmp_path, value, seconds):
    from sglang_mint.config import MintConfig

    if value is None:
        monkeypatch.delenv("MINT_USAGE_FLUSH_S", raising=False)
    else:
        monkeypatch.setenv("MINT_USAGE_FLUSH_S", value)
    assert MintConfig.from_flags(usage_dir=str(tmp_path)).usage_flush_s == seconds  # None: the ledger's 2 s


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "2s", "²", "1e300", "86401"])
def test_a_bad_flush_interval_is_refused_at_startup_by_name(monkeypatch, tmp_path, value):
    from sglang_mint.config import MintConfig

    monkeypatch.setenv("MINT_USAGE_FLUSH_S", value)
    with pytest.raises(MintError, match=f"MINT_USAGE_FLUSH_S={value!r}"):
        MintConfig.from_flags(usage_dir=str(tmp_path))
    assert MintConfig.from_flags(usage_dir="off").usage_dir is None  # no ledger: not read


def test_close_appends_what_is_left_and_is_safe_twice(tmp_path):
    book = ledger(tmp_path)  # appends once an hour: only close writes here
    book.record("acme/bot", 3, prompt_tokens=5, cached_tokens=0, completion_tokens=2)
    book.close()
    book.close()
    assert requests_by_adapter(tmp_path) == {"acme/bot": 1}


SIGNALLED_CHILD = """
import os, signal, sys
sys.path.insert(0, {root!r})
from sglang_mint.process import before_sigterm
from sglang_mint.usage import ledger as ledger_module
from sglang_mint.usage.ledger import UsageLedger

book = UsageLedger({folder!r}, "e", flush_s=3600)  # appends only when told: at the signal
before_sigterm(book.flush_at_signal)
for _ in range(5):
    book.record("acme/bot", 1, prompt_tokens=500, cached_tokens=0, completion_tokens=200)
where = {where!r}
if where == "record":  # SIGTERM while the main thread is half way through counting a request
    lock = book._lock

    class SignalInside:
        sent = False

        def __enter__(self):
            lock.acquire()
            if not SignalInside.sent:  # once: the handler's own flush takes this lock too
                SignalInside.sent = True
                os.kill(os.getpid(), signal.SIGTERM)  # delivered at the next bytecode: inside the count
        def __exit__(self, *exc):
            lock.release()
    book._lock = SignalInside()
    book.record("acme/bot", 1, prompt_tokens=500, cached_tokens=0, completion_tokens=200)
else:  # SIGTERM while the graceful stop's close appends on the main thread
    append = ledger_module._append

    def append_then_signal(path, lines):
        os.kill(os.getpid(), signal.SIGTERM)  # delivered before the write below returns
        append(path, lines)
    ledger_module._append = append_then_signal
    book.record("acme/bot", 1, prompt_tokens=500, cached_tokens=0, completion_tokens=200)
    book.close()
print("not killed", flush=True)
"""


@pytest.mark.parametrize("where", ["record", "close"])
def test_a_sigterm_inside_the_ledger_waits_for_it_then_appends_every_count(tmp_path, where):
    """The scheduler's SIGTERM handler appends what is left. Run in the middle of a count it wrote a row
    half counted (requests 1, tokens 0); run while close held rows it had taken to append, it found
    none and the process ended: every count lost. Now the signal is held back until the ledger's
    call is done, then raised again, and the process ends as SIGTERM ends it, every count appended."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    root = str(Path(__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", SIGNALLED_CHILD.format(root=root, folder=str(tmp_path),
                                                                           where=where)],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == -signal.SIGTERM and "not killed" not in out.stdout, out.stderr[-2000:]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    [row] = read_usage(tmp_path)
    want = {"requests": 6, "prompt_tokens": 3000, "cached_tokens": 0, "completion_tokens": 1200, "errors": 0,
            "cancelled": 0}
    assert {k: row[k] for k in FIELDS} == want, os.listdir(tmp_path)


def test_close_gives_up_on_an_append_that_hangs(tmp_path, caplog):
    """A hung disk under --mint-usage-dir must not hold a stop (nor a SIGTERM that comes meanwhile)."""
    book = ledger(tmp_path)
    book.record("acme/bot", 3, prompt_tokens=5, cached_tokens=0, completion_tokens=2)
    book._flushing.acquire()  # an append under way that never ends
    try:
        with caplog.at_level("WARNING", logger="sglang_mint"):
            book.close(timeout_s=0.2)
    finally:
        book._flushing.release()
    assert "an append still runs" in caplog.text
    assert requests_by_adapter(tmp_path) == {}


def test_a_write_the_disk_cut_short_is_not_counted_twice(tmp_path, monkeypatch):
    """A full disk can take part of an append: the lines before the cut are in the file, the rest
    are not, and the write raises. The counts are kept for the next flush, which appended all of
    them again: acme/a, whose line had gone through, was billed twice."""
    a = ledger(tmp_path)
    a.record("acme/a", 1, prompt_tokens=3, cached_tokens=0, completion_tokens=1)
    a.record("acme/b", 1, prompt_tokens=5, cached_tokens=0, completion_tokens=1)
    real_open = open

    class CutShort:
        """The file, whose next write stores its first line only, then fails as a full disk does."""

        def __init__(self, f):
            self.f = f

        def write(self, data):
            self.f.write(bytes(data)[:bytes(data).index(b"\n") + 1])
            self.f.flush()
            raise OSError(28, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr("builtins.open", lambda *args, **kw: CutShort(real_open(*args, **kw)))
    with pytest.raises(OSError):
        a.flush()
    monkeypatch.setattr("builtins.open", real_open)
    assert a.flush() == 2
    assert {r["adapter"]: r["requests"] for r in read_usage(tmp_path)} == {"acme/a": 1, "acme/b": 1}
