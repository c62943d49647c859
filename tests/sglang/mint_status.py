"""GET /mint/status of a test's server, and its scheduler's memory, for the end-to-end tests that read them."""

from __future__ import annotations

import json
import urllib.request

import psutil


def mint_status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status", timeout=60) as r:
        return json.loads(r.read())


def scheduler_rss(server) -> int:
    """The resident memory of the server's scheduler process (the largest child if none is named so)."""
    procs = psutil.Process(server.proc.pid).children(recursive=True)
    sched = [p for p in procs if "scheduler" in " ".join(p.cmdline()) + p.name()]
    return max(p.memory_info().rss for p in (sched or procs))
