"""Start and stop a real ``python -m sglang.launch_server`` for tests, demo and benchmarks.

    with SGLangServer(model_dir, lora_paths={"a1": path}) as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none")

On a machine without a GPU it runs SGLang's CPU engine with the flags that
work there (see ``CPU_FLAGS``) and the driver stub from ``cpu_env``. The
server runs as a ``sglang_mint.process.ManagedProcess`` (its own process group,
output in a log file, stopped with SIGTERM then SIGKILL); a server that dies
while starting, or is not healthy in time, raises ServerFailed with the log's tail.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from sglang_mint.dev.cpu_env import cpu_server_env, has_gpu_driver
from sglang_mint.ports import free_port  # noqa: F401 - tests and benches import it from here
from sglang_mint.process import ManagedProcess, ProcessFailed, url_answers

CPU_FLAGS = [
    "--device", "cpu",
    "--attention-backend", "torch_native",
    "--skip-server-warmup",
    "--max-total-tokens", "65536",  # without it SGLang sizes a 15 GB KV cache
    "--dtype", "float32",
]
LORA_FLAGS = ["--enable-lora", "--max-loras-per-batch", "4", "--max-lora-rank", "8", "--lora-target-modules", "all"]


class ServerFailed(ProcessFailed):
    pass


# The modules of sglang.srt.models that the dev and test models need (the tiny Llama, Qwen3-MoE and
# DeepSeek-V3, the random Llamas of the benchmarks). SGLang imports all ~250 at start, about 3 s
# a process; model_modules=None keeps that.
DEV_MODEL_MODULES = ("llama", "qwen3_moe", "deepseek_v2")


def _other_model_modules(keep: tuple[str, ...]) -> list[str]:
    """The names of sglang.srt.models' modules not in ``keep``, found without importing them."""
    spec = importlib.util.find_spec("sglang")
    models = Path(spec.origin).parent / "srt" / "models"
    return sorted(p.stem for p in models.glob("*.py") if p.stem not in keep and p.stem != "__init__")


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
        model_modules: tuple[str, ...] | None = DEV_MODEL_MODULES,
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
        if model_modules is not None:  # SGLang's own switch: the registry skips the other model modules
            inherited.setdefault("SGLANG_DISABLED_MODEL_ARCHS", ",".join(_other_model_modules(model_modules)))
        self.env = cpu_server_env({**inherited, **(env or {})})
        self.process = ManagedProcess(self.args, name="sglang", log_path=self.log_path, env=self.env,
                                      error=ServerFailed)

    @property
    def proc(self) -> subprocess.Popen | None:
        return self.process.proc

    @property
    def start_seconds(self) -> float | None:
        return self.process.start_seconds

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def openai_url(self) -> str:
        return self.url + "/v1"

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def status_of(self, method: str, path: str) -> int:
        """The HTTP status of one bodiless request, any method token (urllib sends only the usual ones)."""
        import http.client

        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path)
            return conn.getresponse().status
        finally:
            conn.close()

    def start(self) -> "SGLangServer":
        for attempt in range(3):
            try:
                self.process.start(ready=self._ready, timeout=self.start_timeout, poll=0.25)
                return self
            except ServerFailed:
                # The port was free when chosen and taken by the time uvicorn bound it (the
                # previous server's internal ports linger a moment): choose another and start again.
                if attempt == 2 or "address already in use" not in self.log_path.read_text(errors="replace"):
                    raise
                self._move_to(free_port())
        return self

    def _move_to(self, port: int) -> None:
        self.args[self.args.index("--port") + 1] = str(port)
        self.port = port
        self.process = ManagedProcess(self.args, name="sglang", log_path=self.log_path, env=self.env,
                                      error=ServerFailed)

    def _ready(self) -> bool:
        return url_answers(self.url + "/health")

    def stop(self, timeout: float = 20.0) -> None:
        self.process.stop(timeout)

    def __enter__(self) -> "SGLangServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
