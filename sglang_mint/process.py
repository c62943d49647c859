"""One long-lived child process that sglang-mint starts, waits for and stops.

    proc = ManagedProcess(["smg", "launch", "--port", "30080"], name="smg", log_path="/tmp/mint-smg/smg.log")
    proc.start(ready="http://127.0.0.1:30080/workers", timeout=30)   # or ready=<callable returning bool>
    proc.log_tail(5)   # the last 5 lines of its output
    proc.stop()        # SIGTERM to its process group; SIGKILL to the group if it still runs 10 s later

Every server sglang-mint starts goes through this class: SGLang engines
(dev/server.py), SMG (gateway/smg.py), moto and PostgreSQL (dev/s3_server.py,
dev/pg_server.py); so tests, benchmarks, ``mint cluster`` and the gateway start,
wait for and stop their processes the same way.

- The child leads a process group of its own (a new session), so ``stop()``
  reaches the launcher and everything it spawned (SGLang's schedulers and
  detokenizer, PostgreSQL's backends), and a Ctrl-C in the terminal reaches
  none of them: whoever started them stops them, in order.
- Its stdout and stderr go to ``log_path`` (a fresh temp file when none is
  given); its stdin is /dev/null.
- ``start(ready=...)`` polls ``ready`` until it holds: a URL that answers 2xx,
  or a callable returning True. If the process exits first, or ``timeout``
  passes, the process is stopped and ``error`` (ProcessFailed unless the caller
  names its own class) is raised with the log's tail, e.g.
  ``smg exited with 2 while starting:`` followed by its last lines.
- ``stop()`` waits for the group's leader, not for every member: an engine's
  gateway watcher (gateway/registration.py) stays in the engine's group,
  ignores SIGTERM and deregisters the engine once the leader has gone. Only
  when the leader outlives ``timeout`` does SIGKILL go to the whole group.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Callable, Sequence, Union

Ready = Union[str, Callable[[], bool]]


class ProcessFailed(RuntimeError):
    """A managed process exited while starting, or did not get ready in time."""


def url_answers(url: str, timeout: float = 2.0) -> bool:
    """True when GET ``url`` answers 2xx; False while nothing listens or the server is not up yet."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except (urllib.error.URLError, http.client.HTTPException, OSError):
        return False


def pid_alive(pid) -> bool:
    """Whether a process ``pid`` exists (also one of another user's); False for a non-int."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def process_identity(pid: int) -> str:
    """``"<pid> <start time>"``: the start time (clock ticks after boot, /proc/<pid>/stat) tells a
    process from a later one that got its pid; ``"<pid> ?"`` where /proc has none."""
    stat = _proc_stat(pid)
    return f"{pid} {stat[19]}" if stat and len(stat) > 19 else f"{pid} ?"


def identity_running(identity: str) -> bool:
    """Whether the process ``identity`` (process_identity) names runs: not gone, not a later
    process that got its pid, and not a zombie (killed, its exit status not yet collected)."""
    pid, _, start = identity.partition(" ")
    if not pid.isdigit():
        return False
    stat = _proc_stat(int(pid))
    if stat is None or len(stat) <= 19:  # gone, or no /proc here: only the pid can tell
        return start == "?" and pid_alive(int(pid))
    return stat[0] != "Z" and start in ("?", stat[19])


class ManagedProcess:
    """``args`` run in a process group of their own, output in ``log_path``.

    ``user`` (when we are root) runs the child as that user and its primary group,
    e.g. ``"postgres"``, which refuses to run as root. ``stop_signal`` is what
    ``stop()`` sends first: SIGTERM, or a server's own quick-shutdown signal
    (PostgreSQL's immediate shutdown is SIGQUIT)."""

    def __init__(self, args: Sequence, *, name: str | None = None, log_path: str | os.PathLike | None = None,
                 env: dict[str, str] | None = None, cwd: str | os.PathLike | None = None, user: str | None = None,
                 stop_signal: int = signal.SIGTERM, error: Callable[[str], Exception] = ProcessFailed):
        self.args = args  # read at start(): a caller may still add to its list
        self.name = name or Path(str(args[0])).name
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="mint-process-")) / f"{self.name}.log"
        self.log_path = Path(log_path)
        self.env, self.cwd, self.user = env, cwd, user
        self.stop_signal = stop_signal
        self.error = error
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None  # from spawn to ready

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def spawn(self) -> subprocess.Popen:
        """Start the process and return at once (``start`` also waits until it is ready)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        ids = {}
        if self.user is not None:
            import pwd

            ids = {"user": self.user, "group": pwd.getpwnam(self.user).pw_gid, "extra_groups": []}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(a) for a in self.args], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=self.env, cwd=self.cwd,
                                         start_new_session=True, **ids)
        return self.proc

    def start(self, ready: Ready | None = None, timeout: float = 60.0, poll: float = 0.25) -> "ManagedProcess":
        """Spawn, then wait until ``ready`` holds; raise ``error`` (after stopping it) if it never does."""
        t0 = time.perf_counter()
        self.spawn()
        if ready is not None:
            check = (lambda: url_answers(ready)) if isinstance(ready, str) else ready
            if not self.wait_until(check, timeout - (time.perf_counter() - t0), poll):
                rc = self.returncode
                self.stop()
                what = f"not ready after {timeout:.0f}s" if rc is None else f"exited with {rc} while starting"
                raise self.error(f"{self.name} {what}:\n{self.log_tail()}")
        self.start_seconds = time.perf_counter() - t0
        return self

    def wait_until(self, condition: Callable[[], bool], timeout: float, poll: float = 0.25) -> bool:
        """True once ``condition()`` holds; False if the process exits first or ``timeout`` passes."""
        deadline = time.perf_counter() + timeout
        while True:
            if self.proc is None or self.proc.poll() is not None:
                return False
            if condition():
                return True
            if time.perf_counter() >= deadline:
                return False
            time.sleep(poll)

    def stop(self, timeout: float = 10.0) -> int | None:
        """``stop_signal`` to the group; SIGKILL to it if the leader still runs after ``timeout``.
        Returns the exit status (None if it was never started). Safe to call twice, or from
        another thread while ``start`` waits (which then raises: the process exited)."""
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        _signal_group(proc.pid, self.stop_signal)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
        return proc.returncode

    def log_text(self) -> str:
        try:
            return self.log_path.read_bytes().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_text().splitlines()[-lines:])

    def __enter__(self) -> "ManagedProcess":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass  # the group ended in between


def before_sigterm(action: Callable[[int], bool]) -> None:
    """Run ``action(signum)`` when SIGTERM reaches this process, then end as SIGTERM would have ended it:
    a last quick write (the usage ledger's counts since its last append) in a process that SIGTERM
    ends at once, such as an SGLang scheduler when systemd or ``ManagedProcess.stop`` signals its
    whole group. A handler installed before runs after ``action``, in its place; one installed from
    C (``getsignal`` answers None) counts as the default. ``action`` returns False to hold the
    signal back (it came in the middle of the work ``action`` would finish): it then raises the
    signal again itself, and this handler runs again. Main thread only: Python runs signal
    handlers there. A handler installed after this one without calling it replaces it."""
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum, frame):
        try:
            if not action(signum):
                return
        except Exception:  # noqa: BLE001 - a last write that failed does not keep the process alive
            logging.getLogger("sglang_mint").exception("before SIGTERM")
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_sigterm)


def numa_nodes() -> int:
    import glob

    return max(1, len(glob.glob("/sys/devices/system/node/node[0-9]*")))


def thread_binding(ranks: int, cores: list[int]) -> str | None:
    """The cores of each of ``ranks`` processes in equal shares, in SGLANG_CPU_OMP_THREADS_BIND's form:
    2 ranks on cores [0, 1, 2, 3] -> "0,1|2,3"; None when there are fewer cores than ranks."""
    if ranks > len(cores):
        return None
    share = len(cores) // ranks
    return "|".join(",".join(str(c) for c in cores[i * share:(i + 1) * share]) for i in range(ranks))


def default_thread_binding(server_args) -> None:
    """Set SGLANG_CPU_OMP_THREADS_BIND for a CPU server with more ranks than NUMA nodes (the
    launcher's environment reaches every scheduler process it spawns). An explicit value wins.
    ``server_args``: SGLang's ServerArgs (device, tp_size, dp_size, pp_size); SGLang's CPU
    init_threads_binding asserts ranks <= NUMA nodes without it (sglang/cpu_compat.py)."""
    import logging

    if getattr(server_args, "device", None) != "cpu" or os.environ.get("SGLANG_CPU_OMP_THREADS_BIND"):
        return
    ranks = (server_args.tp_size or 1) * (server_args.dp_size or 1) * (getattr(server_args, "pp_size", 1) or 1)
    if ranks <= numa_nodes():
        return
    binding = thread_binding(ranks, sorted(os.sched_getaffinity(0)))
    if binding is not None:
        os.environ["SGLANG_CPU_OMP_THREADS_BIND"] = binding
        logging.getLogger("sglang_mint").info("SGLANG_CPU_OMP_THREADS_BIND=%s (one share of the cores per rank)",
                                              binding)
