"""Per-adapter usage: requests, prompt, cached and completion tokens, errors and cancellations, per minute.

The scheduler counts each request once, as it ends, with ``UsageLedger.record``: a dict
update under a lock, nothing else on its loop. A background thread appends what was
counted since its last pass to rotating JSON-lines files, one per engine process and
hour, every ``flush_s`` (``$MINT_USAGE_FLUSH_S``, config.py; default 2); a row is a delta,
so the same (adapter, revision, minute) may appear in several lines and in several
engines' files::

    usage/usage-127.0.0.1_30000-dp0-2026120504.jsonl
    {"adapter": "acme/bot", "revision": 3, "minute": "2026-12-05T04:17:00Z", "requests": 2,
     "prompt_tokens": 40, "cached_tokens": 16, "completion_tokens": 12, "errors": 0, "cancelled": 1}

``errors`` counts requests the server ended with an error status (a refusal, an overload, a
timeout); ``cancelled`` those ended without one, because their client hung up or someone
aborted them. Tokens count either way: what was computed before the end was spent. SGLang 0.5.23
reports a few timeouts without their status (a chunked prefill's, its dLLM and disaggregation
queues'): those count as cancelled.

``read_usage`` sums them into one row per (adapter, revision, minute): the ledger's view.
``adapter`` is the adapter id (``null`` for the base model), ``revision`` the catalog
revision served (``null`` for an adapter from ``--lora-paths`` or ``/load_lora_adapter``).
Files older than ``keep_days`` are deleted as the hour turns. Nothing here knows SGLang:
the glue passes plain counts (sglang/residency.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import signal
import socket
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from sglang_mint.errors import shown

logger = logging.getLogger("sglang_mint")

FIELDS = ("requests", "prompt_tokens", "cached_tokens", "completion_tokens", "errors", "cancelled")
FLUSH_S = 2.0  # seconds between appends, unless $MINT_USAGE_FLUSH_S says otherwise (config.py)
KEEP_DAYS = 30
_FILE = re.compile(r"usage-(?P<engine>.+)-(?P<hour>\d{10})\.jsonl\Z")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


def engine_name(host: str, port: int, dp_rank: int, machine: str | None = None) -> str:
    """An engine's name in the ledger, ``gpu-a/10.0.0.5:30000/dp0``: the machine first, since engines
    started alike on several machines share the rest, and a shared folder or a merge of their
    answers (engines.py) must tell them apart."""
    return f"{machine or socket.gethostname()}/{host}:{port}/dp{dp_rank}"  # a name only: no traffic


def minute_text(epoch_s: float) -> str:
    """``1796444237.5`` -> ``"2026-12-05T04:17:00Z"``: the minute a moment falls in, UTC."""
    return datetime.fromtimestamp(int(epoch_s) // 60 * 60, timezone.utc).strftime("%Y-%m-%dT%H:%M:00Z")


def parse_moment(text: str) -> float:
    """An ISO 8601 moment (``2026-12-05T04:17:00Z``, ``2026-12-05``; UTC unless it says) or epoch
    seconds -> epoch seconds; ValueError naming it otherwise."""
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(seconds):
            return seconds
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{shown(text)} is not a moment: expected ISO 8601 (2026-12-05T04:17:00Z) or epoch "
                         "seconds") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


class UsageLedger:
    """One engine process's counts, appended to ``directory`` in the background."""

    def __init__(self, directory: str | os.PathLike, engine: str, *, flush_s: float | None = None,
                 keep_days: float = KEEP_DAYS, clock=time.time):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.engine = _UNSAFE.sub("_", engine)
        self.keep_s = keep_days * 86400
        self._clock = clock
        self._counts: dict[tuple, list[int]] = {}
        # Taken on the main thread only inside a counted call (_main_calls): a SIGTERM there is held back,
        # as the handler's flush would wait on this lock for good.
        self._lock = threading.Lock()
        self._flushing = threading.Lock()  # one append at a time: a flush at a signal waits for the thread's
        self._main = threading.main_thread()
        self._main_calls = 0  # record/flush/close calls under way on the main thread, where signal handlers run
        self._signal_after: int | None = None  # a signal that came during one of them, raised again after it
        self._hour: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(flush_s or FLUSH_S,),
                                        name="mint-usage", daemon=True)
        self._thread.start()

    def record(self, adapter: str | None, revision: int | None, *, prompt_tokens: int, cached_tokens: int,
               completion_tokens: int, error: bool = False, cancelled: bool = False, requests: int = 1) -> None:
        """Count one request that ended now (``requests=0``: tokens spent for requests counted apart). O(1);
        safe from any thread."""
        key = (adapter, revision, minute_text(self._clock()))
        on_main = threading.current_thread() is self._main  # as _main_thread_work, without its generator
        if on_main:
            self._main_calls += 1
        try:
            with self._lock:
                counts = self._counts.setdefault(key, [0] * len(FIELDS))
                counts[0] += requests
                counts[1] += prompt_tokens
                counts[2] += cached_tokens
                counts[3] += completion_tokens
                counts[4] += bool(error)
                counts[5] += bool(cancelled)
        finally:
            if on_main:
                self._main_call_done()

    def flush(self) -> int:
        """Append what was counted since the last flush; returns the rows written. Each row goes to
        the file of the hour its minute is in (a request ended at 04:59:59 and flushed at 05:00:01
        is in the 04 file, which a bill until 05:00 reads). Counts a write fails to append are kept
        for the next flush, and the error raised."""
        with self._main_thread_work(), self._flushing:
            return self._append_counts()

    def _append_counts(self) -> int:
        with self._lock:
            counts, self._counts = self._counts, {}
        if not counts:
            return 0
        by_hour: dict[str, list[tuple[tuple, list[int]]]] = {}
        for key, c in counts.items():
            by_hour.setdefault(_file_hour(key[2]), []).append((key, c))
        written = 0
        for hour in sorted(by_hour):
            lines = "".join(json.dumps({"adapter": a, "revision": r, "minute": m, **dict(zip(FIELDS, c))}) + "\n"
                            for (a, r, m), c in by_hour[hour])
            try:
                _append(self.directory / f"usage-{self.engine}-{hour}.jsonl", lines)
            except BaseException:
                self._keep(row for rows in by_hour.values() for row in rows)  # those not appended yet
                raise
            written += len(by_hour.pop(hour))
        now_hour = time.strftime("%Y%m%d%H", time.gmtime(self._clock()))
        if now_hour != self._hour:
            self._hour = now_hour
            self._forget_older_than(self._clock() - self.keep_s)
        return written

    def _keep(self, rows) -> None:
        """Put counts back, added to any counted since."""
        with self._lock:
            for key, c in rows:
                counts = self._counts.setdefault(key, [0] * len(FIELDS))
                for i, n in enumerate(c):
                    counts[i] += n

    def _forget_older_than(self, cutoff: float) -> None:
        for path in self.directory.glob("usage-*.jsonl"):
            m = _FILE.match(path.name)
            if m and _hour_start(m["hour"]) + 3600 < cutoff:
                path.unlink(missing_ok=True)

    def _run(self, flush_s: float) -> None:
        while not self._stop.wait(flush_s):
            try:
                self.flush()
            except OSError as exc:  # a full disk must not stop serving; the counts wait for the next pass
                logger.warning("usage ledger %s: %s", self.directory, exc)

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop appending in the background, and append what is left: at a stop, so that the last answers
        are billed. An append under way is waited for ``timeout_s`` at most (a hung disk must not hold a
        stop, nor a SIGTERM that comes meanwhile): past it, what is left is given up, with a warning.
        ``flush`` still appends after a close."""
        with self._main_thread_work():
            self._stop.set()
            self._thread.join(timeout=timeout_s)
            if not self._flushing.acquire(timeout=timeout_s):
                logger.warning("usage ledger %s: an append still runs after %.0f s; the counts since are not "
                               "appended", self.directory, timeout_s)
                return
            try:
                self._append_counts()
            finally:
                self._flushing.release()

    def flush_at_signal(self, signum: int) -> bool:
        """For a signal handler (process.before_sigterm): append what is left, and True. But when the signal
        came while the main thread, where handlers run, was inside this ledger (a record half counted, a
        flush holding rows it took), False: the signal is raised again once that call is done, so the
        handler runs again with nothing half done. The background appends go on: the process may too."""
        if self._main_calls:
            self._signal_after = signum
            return False
        self.flush()
        return True

    @contextlib.contextmanager
    def _main_thread_work(self):
        """Count a call under way on the main thread; at its end, raise a signal it held back."""
        if threading.current_thread() is not self._main:
            yield
            return
        self._main_calls += 1
        try:
            yield
        finally:
            self._main_call_done()

    def _main_call_done(self) -> None:
        self._main_calls -= 1
        if not self._main_calls and self._signal_after is not None:
            signum, self._signal_after = self._signal_after, None
            signal.raise_signal(signum)


def _append(path: Path, lines: str) -> None:
    """``lines`` at the end of ``path`` in one write (a reader never sees half of them), on a line of
    their own: after a line cut short by a kill or a full disk, not joined to it. A write a full disk
    fails part way is taken back whole: its counts are kept for the next flush, which would append
    the lines that had gone through a second time."""
    data = lines.encode("utf-8")
    with open(path, "a+b", buffering=0) as f:  # writes go to the end whatever the position; none buffered
        end = f.seek(0, os.SEEK_END)
        if end > 0:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                data = b"\n" + data
        try:
            rest = memoryview(data)
            while rest:
                rest = rest[f.write(rest):]
        except BaseException:
            f.truncate(end)
            raise


def _file_hour(minute: str) -> str:
    """The hour of a row's minute as file names spell it: ``2026-12-05T04:59:00Z`` -> ``2026120504``."""
    return minute[:13].replace("-", "").replace("T", "")


def _hour_start(hour: str) -> float:
    return datetime.strptime(hour, "%Y%m%d%H").replace(tzinfo=timezone.utc).timestamp()


def read_usage(directory: str | os.PathLike, adapter: str | None = None, since: float | None = None,
               until: float | None = None, per_minute: bool = True) -> list[dict]:
    """One row per (adapter, revision, minute) with ``since <= minute < until``, summed over every
    engine's files in ``directory``, oldest first; ``adapter`` keeps that id's rows only.
    ``per_minute`` False: one row per (adapter, revision) over the whole span, most requests first."""
    return read_ledger(directory, adapter, since, until, per_minute)[0]


def read_ledger(directory: str | os.PathLike, adapter: str | None = None, since: float | None = None,
                until: float | None = None, per_minute: bool = True) -> tuple[list[dict], list[str]]:
    """``read_usage``'s rows, and the engines whose files they were summed from: one pass over the
    folder, so an engine whose first file appears during the read is in both or in neither."""
    rows: dict[tuple, list[int]] = {}
    engines: set[str] = set()
    for path, engine in _files_in_span(directory, since, until):
        engines.add(engine)
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut short by a full disk or a kill
            if adapter is not None and row.get("adapter") != adapter:
                continue
            at = parse_moment(row["minute"])
            if (since is not None and at < since) or (until is not None and at >= until):
                continue
            key = (row["adapter"], row["revision"], row["minute"] if per_minute else None)
            counts = rows.setdefault(key, [0] * len(FIELDS))
            for i, name in enumerate(FIELDS):
                counts[i] += int(row.get(name, 0))
    if per_minute:
        ordered = sorted(rows.items(), key=lambda kv: (kv[0][2], kv[0][0] or "", kv[0][1] or 0))
        out = [{"adapter": a, "revision": r, "minute": m, **dict(zip(FIELDS, c))} for (a, r, m), c in ordered]
    else:
        ordered = sorted(rows.items(), key=lambda kv: (-kv[1][0], kv[0][0] or "", kv[0][1] or 0))
        out = [{"adapter": a, "revision": r, **dict(zip(FIELDS, c))} for (a, r, _), c in ordered]
    return out, sorted(engines)


def _files_in_span(directory: str | os.PathLike, since: float | None, until: float | None):
    """(path, engine) of each ledger file whose hour overlaps ``[since, until)``."""
    for path in sorted(Path(directory).glob("usage-*.jsonl")):
        m = _FILE.match(path.name)
        if m is None:
            continue
        start = _hour_start(m["hour"])
        if (since is not None and start + 3600 <= since) or (until is not None and start >= until):
            continue
        yield path, m["engine"]


def requests_per_adapter(rows: list[dict]) -> dict[str, int]:
    """Requests per adapter id in ``read_usage``'s rows, every revision and minute summed; the base
    model left out (the request rates gateway/placement.py places adapters by)."""
    counts: dict[str, int] = {}
    for row in rows:
        if row["adapter"] is not None:
            counts[row["adapter"]] = counts.get(row["adapter"], 0) + row["requests"]
    return counts


def requests_by_adapter(directory: str | os.PathLike, since: float | None = None,
                        until: float | None = None) -> dict[str, int]:
    """Requests per adapter id over the span, from the files in ``directory``."""
    return requests_per_adapter(read_usage(directory, since=since, until=until, per_minute=False))
