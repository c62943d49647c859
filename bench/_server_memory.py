"""The memory of a running server's processes: PSS (Linux ``Pss``) summed over the process and its descendants.

    with ServerMemory(server.proc.pid) as memory:   # samples every 0.2 s in a thread
        ...
    memory.peak_bytes, memory.first_bytes

PSS splits a shared page among the processes sharing it, so SGLang's three processes
(launcher, scheduler, detokenizer) add up to what they cost the machine together.
"""

from __future__ import annotations

import threading
from pathlib import Path


def pss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    except OSError:  # the process ended
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return out


def tree_pss_bytes(pid: int) -> int:
    return sum(pss_bytes(p) for p in descendants(pid))


class ServerMemory:
    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid = pid
        self.interval_s = interval_s
        self.first_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-memory", daemon=True)

    def sample(self) -> int:
        now = tree_pss_bytes(self.pid)
        if not self.samples:
            self.first_bytes = now
        self.samples += 1
        self.peak_bytes = max(self.peak_bytes, now)
        return now

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> "ServerMemory":
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()
