"""Run Python snippets each in a fresh process that starts with SGLang already imported.

Importing SGLang's scheduler costs some 12 CPU-seconds; a test module whose checks each need
a process of their own (plugins loaded, hooks applied, methods deleted) pays that once: one
server process imports the modules and never loads a plugin, and every snippet runs in a
child forked from it, so each starts from the same untouched state and leaves nothing behind.
The child writes its output to files and exits with the snippet's status, as ``python -c``
would: ``run(code)`` returns a ``subprocess.CompletedProcess``.

Example: ``with ForkedPython(["sglang.srt.managers.scheduler"]) as py: py.run("print(1)")``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap

# The server: imports what it is told, then for each request (one JSON line on stdin) forks a
# child that runs the code with stdout and stderr sent to the request's files, and answers
# with the child's exit status. Nothing else runs in the server, so every child starts alike.
SERVER = r"""
import importlib, json, os, signal, sys, traceback
# An SGLang process that fails sends its parent SIGQUIT (run_scheduler_process does); here the
# parent is this server, which must outlive the child, so it ignores that; the child does not.
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
print("READY", flush=True)
for line in sys.stdin:
    req = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGQUIT, signal.SIG_DFL)
        out = os.open(req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        err = os.open(req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(out, 1)
        os.dup2(err, 2)
        sys.stdin = open(os.devnull)
        code = 0
        try:
            exec(compile(req["code"], "<string>", "exec"), {"__name__": "__main__"})
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            traceback.print_exc()
            code = 1
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps(os.waitstatus_to_exitcode(status)), flush=True)
"""


class ForkedPython:
    def __init__(self, modules: list[str], env: dict[str, str] | None = None):
        self.modules = modules
        self.env = {**os.environ, **(env or {})}

    def __enter__(self) -> "ForkedPython":
        self.dir = tempfile.TemporaryDirectory(prefix="forked-python-")
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, json.dumps(self.modules)], env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        ready = self.proc.stdout.readline()
        assert ready.strip() == "READY", f"the fork server did not start: {ready!r}"
        self.count = 0
        return self

    def run(self, code: str) -> subprocess.CompletedProcess:
        self.count += 1
        out, err = (os.path.join(self.dir.name, f"{self.count}.{s}") for s in ("out", "err"))
        code = textwrap.dedent(code)
        self.proc.stdin.write(json.dumps({"code": code, "stdout": out, "stderr": err}) + "\n")
        self.proc.stdin.flush()
        rc = json.loads(self.proc.stdout.readline())
        with open(out) as o, open(err) as e:
            return subprocess.CompletedProcess(["<forked>", code], rc, o.read(), e.read())

    def __exit__(self, *exc) -> None:
        # Nothing is left to learn from the server: killed, it does not spend the CPU-seconds of an
        # interpreter's shutdown with SGLang imported (in the fast lane at nice 19 those took over 60 s).
        self.proc.stdin.close()
        self.proc.kill()
        self.proc.wait()
        self.dir.cleanup()


def publish_as_scheduler_without(run_py, module: str, target: str) -> list[str]:
    """Load the plugins, delete ``target`` ("name" or "Class.name") of SGLang module ``module`` (as if
    SGLang had renamed it), then announce a scheduler with ``publish(role="scheduler")`` twice: stock, then with
    --enable-mint. Returns the two outcome lines, "PUBLISHED <error>" or "REFUSED <message>"."""
    proc = run_py(f"""
        from types import SimpleNamespace
        from sglang.srt import runtime_context
        from sglang.srt.plugins import load_plugins
        import {module} as sglang_module
        from sglang_mint.config import MintConfig
        from sglang_mint.sglang import hooks

        load_plugins()
        del sglang_module.{target}
        for args in (SimpleNamespace(), SimpleNamespace(_mint=MintConfig())):  # stock, then --enable-mint
            try:
                runtime_context.publish(args, role="scheduler")
            except hooks.HooksNotApplied as exc:
                print("REFUSED", exc)
            except Exception as exc:  # past our check, SGLang's own publish fails on these arguments
                print("PUBLISHED", type(exc).__name__)
    """)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("REFUSED", "PUBLISHED"))]
    assert len(lines) == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    return lines
