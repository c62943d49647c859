"""The environment SGLang needs to run on a machine without a GPU driver.

``import sgl_kernel`` loads ``common_ops``, which links against the CUDA driver
(``libcuda.so.1``) for one symbol, ``cuPointerGetAttribute``. On a machine with
no driver the import fails before SGLang can pick its CPU path. A stand-in
``libcuda.so.1`` whose entry points all answer CUDA_ERROR_NO_DEVICE satisfies
the loader; ``torch.cuda.is_available()`` stays False. It is built once with
the system C compiler and cached. A GPU machine never needs it.

Use it from a shell:  ``eval "$(mint dev cpu-env)"``  then run
``python -m sglang.launch_server ... --device cpu``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from sglang_mint.config import default_cache_dir  # noqa: F401 - dev modules import it from here

CUDA_ERROR_NO_DEVICE = 100

STUB_SOURCE = """\
/* Stand-in CUDA driver for machines without a GPU: every call reports
 * CUDA_ERROR_NO_DEVICE, so libraries that link the driver can be loaded. */
#define NO_DEVICE %d
int cuInit(unsigned int flags) { return NO_DEVICE; }
int cuDriverGetVersion(int *v) { if (v) *v = 0; return NO_DEVICE; }
int cuDeviceGetCount(int *n) { if (n) *n = 0; return NO_DEVICE; }
int cuGetProcAddress(const char *s, void **p, int v, unsigned long long f) { return NO_DEVICE; }
int cuGetProcAddress_v2(const char *s, void **p, int v, unsigned long long f, void *st) { return NO_DEVICE; }
int cuPointerGetAttribute(void *d, int a, unsigned long long p) { return NO_DEVICE; }
""" % CUDA_ERROR_NO_DEVICE


def has_gpu_driver() -> bool:
    """True when a real CUDA driver is on the machine (then no stub is needed)."""
    if os.path.exists("/dev/nvidiactl"):
        return True
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def build_cuda_stub(cache_dir: Path | None = None) -> Path:
    """Build (once) the stand-in ``libcuda.so.1``; return the folder holding it."""
    out_dir = (cache_dir or default_cache_dir()) / "cuda-stub"
    lib = out_dir / "libcuda.so.1"
    if lib.exists():
        return out_dir
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        raise RuntimeError(
            "building the CUDA driver stub for CPU mode needs a C compiler (gcc or cc); "
            "install one, e.g. `apt-get install gcc`"
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    src = out_dir / "cuda_stub.c"
    src.write_text(STUB_SOURCE)
    tmp = out_dir / f"libcuda.so.1.tmp{os.getpid()}"
    subprocess.run(
        [cc, "-shared", "-fPIC", "-o", str(tmp), str(src), "-Wl,-soname,libcuda.so.1"],
        check=True,
    )
    os.replace(tmp, lib)  # atomic: concurrent builders never see half a library
    return out_dir


def cpu_server_env(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for an SGLang process on a machine without a GPU.

    Adds the driver stub to LD_LIBRARY_PATH (only where no driver exists),
    SGLANG_USE_CPU_ENGINE=1 (without it SGLang's startup imports vllm), HF_HUB_OFFLINE=1
    (local models only), and no py-spy or CUDA core dump when a scheduler exits: SGLang
    sleeps 5 s "to let GPU activity settle" before them, and a stop (SIGTERM to the
    server's process group, process.py) ends its schedulers first, so every stop waited
    those 5 s for nothing.
    """
    env = dict(os.environ if base is None else base)
    if not has_gpu_driver():
        stub_dir = str(build_cuda_stub())
        paths = [p for p in env.get("LD_LIBRARY_PATH", "").split(":") if p]
        if stub_dir not in paths:
            env["LD_LIBRARY_PATH"] = ":".join([stub_dir] + paths)
    env.setdefault("SGLANG_USE_CPU_ENGINE", "1")
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("SGLANG_PYSPY_DUMP_BEFORE_CRASH", "0")
    env.setdefault("SGLANG_CUDA_COREDUMP_BEFORE_CRASH", "0")
    return env


def shell_exports(env_before: dict[str, str], env_after: dict[str, str]) -> str:
    """``export K=V`` lines for what ``cpu_server_env`` added or changed."""
    import shlex

    lines = []
    for key, value in sorted(env_after.items()):
        if env_before.get(key) != value:
            lines.append(f"export {key}={shlex.quote(value)}")
    return "\n".join(lines)
