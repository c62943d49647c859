"""The memory of a running server's processes: PSS (Linux ``Pss``) summed over the process and its descendants.

    with ServerMemory(server.proc.pid) as memory:   # samples every 0.2 s in a thread
        ...
    memory.peak_bytes, memory.first_bytes
    memory.growth_by_process()   # {"sglang::scheduler": bytes, ...}: each process's peak less its first

PSS splits a shared page among the processes sharing it, so SGLang's three processes
(launcher, scheduler, detokenizer) add up to what they cost the machine together.
"""

from __future__ import annotations

import threading
from pathlib import Path


def mib(n: int) -> float:
    return round(n / (1 << 20), 1)


def processes(server) -> dict:
    """The launcher (frontend: HTTP server and tokenizer manager) and the scheduler of an ``SGLangServer``, as
    ``psutil.Process`` es."""
    import psutil

    launcher = psutil.Process(server.proc.pid)
    sched = [p for p in launcher.children(recursive=True) if "scheduler" in " ".join(p.cmdline() + [p.name()])]
    return {"frontend": launcher, "scheduler": sched[0]}


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


def process_name(pid: int) -> str:
    """SGLang names its processes (``sglang::scheduler``); the launcher is ``python``."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return "?"


def tree_pss_bytes(pid: int) -> int:
    return sum(pss_bytes(p) for p in descendants(pid))


class ServerMemory:
    def __init__(self, pid: int, interval_s: float = 0.2):
        self.pid = pid
        self.interval_s = interval_s
        self.first_bytes = 0
        self.peak_bytes = 0
        self.samples = 0
        self._first_by_pid: dict[int, int] = {}
        self._peak_by_pid: dict[int, int] = {}
        self._name_by_pid: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="server-memory", daemon=True)

    def sample(self) -> int:
        by_pid = {p: pss_bytes(p) for p in descendants(self.pid)}
        for p, b in by_pid.items():
            if p not in self._name_by_pid:
                self._name_by_pid[p], self._first_by_pid[p] = process_name(p), b
            self._peak_by_pid[p] = max(self._peak_by_pid.get(p, 0), b)
        now = sum(by_pid.values())
        if not self.samples:
            self.first_bytes = now
        self.samples += 1
        self.peak_bytes = max(self.peak_bytes, now)
        return now

    def growth_by_process(self) -> dict[str, int]:
        """Each process's peak PSS less its first sample, summed over processes of one name."""
        out: dict[str, int] = {}
        for p, name in self._name_by_pid.items():
            out[name] = out.get(name, 0) + self._peak_by_pid[p] - self._first_by_pid[p]
        return out

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
