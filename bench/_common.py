"""What every benchmark result carries (the machine, the git commit, the time), stock SGLang and mint run one after
the other on the same work, and waiting out other servers."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=Path(__file__).resolve().parent, check=True)
        # The results a run before appended (bench/results/*.jsonl) change no code that runs.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                ":(top)", ":(top,exclude)bench/results"], capture_output=True,
                               text=True, cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def machine() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["device"] = "cpu"
    return info


def stamped(row: dict) -> dict:
    """``row`` with the commit, the time and the machine's fields beside its own (the host-time benches' rows)."""
    return {**row, "git_commit": git_commit(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **machine()}


def append_rows(path, rows: list[dict]) -> None:
    """Append ``rows`` to the JSON-lines file ``path``, one line each."""
    with open(path, "a") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def append_result(name: str, record: dict) -> dict:
    """Append one JSON line to bench/results/<name>.jsonl, stamped with machine, commit and time."""
    record = {**record, "machine": machine(), "commit": git_commit(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / f"{name}.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    return record


def post_status(url: str, path: str, body: dict, timeout: float = 1800) -> int:
    """POST ``body`` as JSON to ``url + path``, read the answer whole: its HTTP status, an error's too."""
    request = urllib.request.Request(url + path, data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            answer.read()
            return answer.status
    except urllib.error.HTTPError as exc:
        exc.read()
        return exc.code


def stock_then_mint(name: str, run, setup: dict, record: bool = True) -> None:
    """``run(model, mint)`` on the tiny random Llama, stock SGLang first and then --enable-mint, one server at a
    time: each row printed, and appended to bench/results/<name>.jsonl with ``setup`` unless not ``record``."""
    from sglang_mint.dev.tiny import write_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        model = str(write_tiny_llama(tmp, seed=0))
        for mint in (False, True):
            row = run(model, mint)
            print(json.dumps(row), flush=True)
            if record:
                append_result(name, {"setup": {"model": "tiny random Llama", **setup}, **row})


def other_server_pids(exclude: int | None = None) -> list[int]:
    out = subprocess.run(["pgrep", "-f", "sglang.launch_server"], capture_output=True, text=True).stdout
    return [int(p) for p in out.split() if int(p) != exclude]


def wait_for_other_servers(exclude: int | None = None, poll_s: float = 5.0, max_wait_s: float = 600.0) -> None:
    """Start no server (and no timed step) while another SGLang server runs on this machine:
    it would share the cores and skew both, and two 2.7 GB models crowd 24 GB. Gives up
    waiting after ``max_wait_s`` (the step is then marked contended)."""
    waited = 0.0
    while other_server_pids(exclude) and waited < max_wait_s:
        if waited == 0:
            print("another sglang.launch_server is running: waiting for it to end", flush=True)
        time.sleep(poll_s)
        waited += poll_s
    if waited:
        print(f"waited {waited:.0f} s for another server", flush=True)
