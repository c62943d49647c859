"""The memory of a test server's processes, for the end-to-end tests that bound it."""

from __future__ import annotations

import psutil


def scheduler_rss(server) -> int:
    """The resident memory of the server's scheduler process (the largest child if none is named so)."""
    procs = psutil.Process(server.proc.pid).children(recursive=True)
    sched = [p for p in procs if "scheduler" in " ".join(p.cmdline()) + p.name()]
    return max(p.memory_info().rss for p in (sched or procs))
