"""Start and stop a real ``python -m sglang.launch_server`` for tests, demo and benchmarks.

    with SGLangServer(model_dir, lora_paths={"a1": path}) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none")

On a machine without a GPU it runs SGLang's CPU engine with the flags that
work there (see ``CPU_FLAGS``) and the driver stub from ``cpu_env``. The
server's output goes to a log file; a server that dies while starting raises
with the log's tail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from sglang_mint.dev.cpu_env import cpu_server_env, has_gpu_driver
from sglang_mint.ports import free_port  # noqa: F401 - tests and benches import it from here

CPU_FLAGS = [
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--skip-server-warmup",
    "--max-total-tokens", "65536",  # without it SGLang sizes a 15 GB KV cache
    "--dtype", "float32",
]
LORA_FLAGS = ["--enable-lora", "--max-loras-per-batch", "4", "--max-lora-rank", "8", "--lora-target-modules", "all"]


class ServerFailed(RuntimeError):
    pass


class SGLangServer:
    def __init__(
        self,
        model: str | Path,
        *,
        served_name: str = "tiny",
        lora_paths: dict[str, str | Path] | None = None,
        enable_mint: bool = True,
        enable_lora: bool = True,
        lora_backend: str = "torch_native",
        env: dict[str, str] | None = None,
        extra_args: list[str] | None = None,
        log_path: str | Path | None = None,
        python: str = sys.executable,
        start_timeout: float = 240.0,
        sleep_on_idle: bool = True,
    ):
        self.port = free_port()
        self.served_name = served_name
        args = [
            python, "-m", "sglang.launch_server",
            "--model-path", str(model),
            "--served-model-name", served_name,
            "--host", "127.0.0.1", "--port", str(self.port),
        ]
        if enable_lora:
            args += [*LORA_FLAGS, "--lora-backend", lora_backend]
        if not has_gpu_driver():
            args += CPU_FLAGS
        if lora_paths:
            args += ["--lora-paths", *(f"{name}={path}" for name, path in lora_paths.items())]
        if enable_mint:
            args.append("--enable-mint")
        if sleep_on_idle:
            # An idle SGLang scheduler busy-polls: on a 2-core machine a server left waiting
            # between tests keeps a core near 90% busy and slows whatever runs beside it.
            args.append("--sleep-on-idle")
        self.args = args + list(extra_args or [])
        if log_path is None:
            log_path = Path(tempfile.mkdtemp(prefix="sglang-mint-")) / "server.log"
        self.log_path = Path(log_path)
        self.start_timeout = start_timeout
        # TRITON_INTERPRET only when asked: a test process sets it for its own kernels, and a
        # server inheriting it would run different code paths than the test meant to check.
        inherited = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
        self.env = cpu_server_env({**inherited, **(env or {})})
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    def start(self) -> "SGLangServer":
        t0 = time.perf_counter()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "w")
        # Own process group: stop() ends the launcher and every process it spawned.
        self.proc = subprocess.Popen(
            self.args, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True
        )
        log.close()
        deadline = t0 + self.start_timeout
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise ServerFailed(f"sglang exited with {self.proc.returncode} while starting:\n{self.log_tail()}")
            if self._ready():
                self.start_seconds = time.perf_counter() - t0
                return self
            time.sleep(0.25)
        self.stop()
        raise ServerFailed(f"sglang not ready after {self.start_timeout:.0f}s:\n{self.log_tail()}")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            return False

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "SGLangServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
