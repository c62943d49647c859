"""sglang_mint.process.ManagedProcess: start in a group of its own, wait for health, stop the group.

Real child processes (small Python scripts, an http.server on a loopback port), no mocks.
"""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import pytest
from hung import HUNG_AFTER_S

from sglang_mint.ports import free_port
from sglang_mint.process import ManagedProcess, ProcessFailed, pid_alive, url_answers


def script(body: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(body)]


def test_waits_for_a_url_logs_and_stops_its_group(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/"
    assert not url_answers(url)
    proc = ManagedProcess([sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
                          name="http.server", log_path=tmp_path / "logs" / "http.log", cwd=tmp_path)
    t0 = time.perf_counter()
    with proc.start(ready=url, timeout=HUNG_AFTER_S, poll=0.05):
        assert 0 < proc.start_seconds <= time.perf_counter() - t0
        # An http.server at nice 19 may take seconds to answer: not url_answers' default 2 s.
        assert proc.running and url_answers(url, timeout=HUNG_AFTER_S)
        assert os.getpgid(proc.pid) == proc.pid  # leads its own group, not the test's
        assert os.getpgid(proc.pid) != os.getpgid(0)
        deadline = time.monotonic() + HUNG_AFTER_S
        while "GET / " not in proc.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "GET / " in proc.log_tail(5)  # stderr reaches the log
    assert not proc.running
    assert proc.returncode == -signal.SIGTERM
    assert proc.stop() == -signal.SIGTERM  # a second stop only reports


def test_stop_reaches_every_process_of_the_group(tmp_path):
    """The leader's child is stopped too: what SGLang's launcher leaves (schedulers) goes with it."""
    pid_file = tmp_path / "child.pid"
    proc = ManagedProcess(script(f"""
        import os, subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        print("child", child.pid, flush=True)  # before the pid file: the test may stop us once that is there
        open({str(pid_file)!r} + ".tmp", "w").write(str(child.pid))
        os.rename({str(pid_file)!r} + ".tmp", {str(pid_file)!r})
        time.sleep(600)
    """), log_path=tmp_path / "parent.log")
    proc.start(ready=pid_file.exists, timeout=HUNG_AFTER_S, poll=0.05)
    child = int(pid_file.read_text())
    assert pid_alive(child) and os.getpgid(child) == proc.pid
    assert proc.stop(timeout=10) == -signal.SIGTERM
    deadline = time.monotonic() + HUNG_AFTER_S  # however long a starved child takes to end
    while _running(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(child)
    assert f"child {child}" in proc.log_text()


def test_sigkill_after_the_timeout_when_sigterm_is_ignored(tmp_path):
    ready = tmp_path / "ready"
    proc = ManagedProcess(script(f"""
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open({str(ready)!r}, "w").close()
        time.sleep(600)
    """), log_path=tmp_path / "stubborn.log")
    proc.start(ready=ready.exists, timeout=HUNG_AFTER_S, poll=0.05)
    t0 = time.monotonic()
    assert proc.stop(timeout=0.5) == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - t0 < 10


def test_a_process_that_exits_while_starting_raises_with_its_log(tmp_path):
    proc = ManagedProcess(script("""
        import sys
        print("cannot bind: address in use", file=sys.stderr)
        sys.exit(3)
    """), name="server", log_path=tmp_path / "server.log")
    with pytest.raises(ProcessFailed) as err:
        proc.start(ready=lambda: False, timeout=HUNG_AFTER_S, poll=0.05)
    assert str(err.value).startswith("server exited with 3 while starting:\n")
    assert "cannot bind: address in use" in str(err.value)
    assert proc.returncode == 3


class NotUp(RuntimeError):
    pass


def test_not_ready_in_time_is_stopped_and_raises_the_callers_error(tmp_path):
    proc = ManagedProcess(script("""
        import time
        print("still loading", flush=True)
        time.sleep(600)
    """), name="slow", log_path=tmp_path / "slow.log", error=NotUp)
    def printed_then_never_ready() -> bool:
        # never ready; but let the child print first, however slowly a loaded machine starts it
        deadline = time.monotonic() + HUNG_AFTER_S
        while "still loading" not in proc.log_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        return False

    t0 = time.monotonic()
    with pytest.raises(NotUp) as err:
        proc.start(ready=printed_then_never_ready, timeout=1.0, poll=0.05)
    assert 1.0 <= time.monotonic() - t0 < HUNG_AFTER_S
    assert str(err.value).startswith("slow not ready after 1s:\n")
    assert "still loading" in str(err.value)
    assert not proc.running and proc.returncode == -signal.SIGTERM


def test_stop_signal_is_the_callers_choice(tmp_path):
    """PostgreSQL's immediate shutdown is SIGQUIT (dev/pg_server.py), which PostgreSQL handles itself.
    The child here takes SIGQUIT's default action explicitly: a suite started in the background by a
    shell without job control (`make test &`) inherits SIGQUIT ignored, and the stop would end in
    SIGKILL after its timeout."""
    proc = ManagedProcess(script("import signal, time; signal.signal(signal.SIGQUIT, signal.SIG_DFL); "
                                 "print('up', flush=True); time.sleep(600)"), log_path=tmp_path / "q.log",
                          stop_signal=signal.SIGQUIT)
    proc.start(ready=lambda: "up" in proc.log_text(), timeout=HUNG_AFTER_S, poll=0.02)  # the handler is in place
    assert proc.stop() == -signal.SIGQUIT


def test_wait_until_is_false_once_the_process_has_exited(tmp_path):
    proc = ManagedProcess(script("print('bye')"), log_path=tmp_path / "bye.log")
    proc.start()
    t0 = time.perf_counter()  # the child exits while this waits, however long a starved one takes
    assert proc.wait_until(lambda: False, timeout=HUNG_AFTER_S, poll=0.05) is False
    assert time.perf_counter() - t0 < HUNG_AFTER_S  # it did not wait out the timeout
    assert proc.returncode == 0 and proc.log_text() == "bye\n"


def test_before_start_and_without_a_log():
    proc = ManagedProcess(["true"])
    assert proc.name == "true" and proc.log_path.name == "true.log"
    assert proc.pid is None and not proc.running and proc.stop() is None
    assert proc.log_tail() == "(no log)" and proc.log_text() == ""


def test_pid_alive():
    assert pid_alive(os.getpid())
    assert not pid_alive(None) and not pid_alive("1")
    assert pid_alive(1)  # init: another user's process counts


def _lines(path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan is reaped by init, but not at once)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("previous", ["default", "handler", "ignored"])
def test_before_sigterm_runs_its_action_then_ends_as_sigterm_would(tmp_path, previous):
    """A real SIGTERM to a real child: the action writes first, then the process ends as the handler
    in place before (the default: killed by SIGTERM; a handler of its own: that handler; ignored: alive,
    and it goes on once told to)."""
    marks, go = tmp_path / "marks", tmp_path / "go"
    proc = ManagedProcess(script(f"""
        import os, signal, sys, time
        sys.path.insert(0, {os.getcwd()!r})
        from sglang_mint.process import before_sigterm
        mark = lambda text: open({str(marks)!r}, "a").write(text + "\\n")
        if {previous!r} == "handler":
            signal.signal(signal.SIGTERM, lambda *_: (mark("previous"), sys.exit(3)))
        elif {previous!r} == "ignored":
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        before_sigterm(lambda signum: mark(f"action {{signum}}") or True)
        open({str(tmp_path / "ready")!r}, "w").close()
        while not os.path.exists({str(go)!r}):
            time.sleep(0.01)
        mark("went on")
    """), name="sigterm-child", log_path=tmp_path / "log")
    proc.start(ready=lambda: (tmp_path / "ready").exists(), timeout=HUNG_AFTER_S)
    os.kill(proc.proc.pid, signal.SIGTERM)
    action = f"action {signal.SIGTERM.value}"
    # `go` once the action has written (no sleep that a starved child may outlast): its handler then ends
    # the process, exits or returns before the child looks at `go` again. Only a process that SIGTERM
    # left running goes on and marks it.
    deadline = time.monotonic() + HUNG_AFTER_S
    try:
        while action not in _lines(marks) and proc.proc.poll() is None:
            assert time.monotonic() < deadline, proc.log_tail()
            time.sleep(0.01)
    finally:
        go.touch()  # a child left waiting for it by a failure ends too
    code = proc.proc.wait(HUNG_AFTER_S)
    assert (code, _lines(marks)) == ({"default": (-signal.SIGTERM, [action]),
                                      "handler": (3, [action, "previous"]),
                                      "ignored": (0, [action, "went on"])}[previous]), proc.log_tail()
