"""The Python environment of a GPU run: the machine's packages, the carried wheels, this checkout.

The GPU machine has torch, triton, numpy, safetensors, transformers, peft and
torchvision (and whatever those need), no sglang and no network. A run adds
two folders in front of its packages, both under a fresh temporary folder:

    site/    the carried wheels, `pip install --no-index --no-deps --target`
             (pure copies: the machine's own torch and triton stay in use)
    shim/    sglang_mint/ as setup.py installs it, made of symbolic links:
             every entry of the checkout's sglang_mint/ plus kernels -> kernels/
             (setup.py maps the top-level kernels/ folder to sglang_mint.kernels)

Example: PYTHONPATH=/tmp/mint-gpu-x/shim:/tmp/mint-gpu-x/site, and
`import sglang_mint.kernels` opens <checkout>/kernels/__init__.py, whose
_config.py resolves its own path and finds <checkout>/configs/kernels.

The checkout's root must stay off sys.path (its sglang_mint/ has no kernels
and would shadow the shim): pytest runs under `python -P`, scripts run by
path (sys.path[0] is the script's folder).

`simulated_image` builds, on a CPU machine, a folder that holds only the GPU
image's packages, linked from this interpreter's site-packages: with
`python -S` and that folder on PYTHONPATH a dry run sees what the GPU
machine would see, and nothing else of the virtualenv. Without wheels (CI:
.whl/ is git-ignored) `carried_standin` links this virtualenv's copies of
the carried distributions instead; requirements.lock pins both.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
WHEELS = REPO / ".whl" / "gpu"

# What the GPU machine has (shared/gpu-notes.md); simulated_image() adds what these need,
# less NOT_ON_IMAGE: this virtualenv's typer needs pydantic, the image's typer does not and
# its package list (2026-11) has no pydantic. pytest is not assumed: it travels as a wheel.
IMAGE = ("torch", "triton", "numpy", "safetensors", "transformers", "peft", "torchvision")
NOT_ON_IMAGE = ("pydantic", "pydantic-core", "annotated-types", "typing-inspection")

# The wheels a run carries (versions: requirements.lock). Found by fetch_wheels.py --check:
# import MODULES on the simulated image, add the distribution of the first missing module,
# repeat.
CARRIED = (
    "sglang",                                      # --no-deps: 39 MB of the budget
    "orjson", "pybase64", "msgspec", "pydantic", "pydantic_core", "typing-inspection",
    "annotated-types", "pyzmq", "requests", "urllib3", "starlette", "ipython", "traitlets",
    "dill", "aiohttp", "aiohappyeyeballs", "aiosignal", "attrs", "frozenlist", "multidict",
    "propcache", "yarl", "sentencepiece",
    "apache-tvm-ffi",                              # sglang.srt.distributed (all-reduce JIT)
    "pytest", "pluggy", "iniconfig", "Pygments",   # for `pytest -m gpu tests/kernels`
)

# What a run imports beyond the image: kernel_bench's SGLang kernels, what tests/kernels
# collects, pytest, our package. Not sglang.srt.lora.lora_moe_runners: on CUDA its imports
# reach sgl_kernel (sglang-kernel, hundreds of MB), so sglang_kernels.py compiles the two
# functions it needs from that file's source and run.py leaves test_moe_glue.py out.
MODULES = (
    "sglang_mint.kernels",
    "pytest",
    "sglang.kernels.ops.lora.dense.chunked_sgmv_shrink",
    "sglang.kernels.ops.lora.dense.chunked_sgmv_expand",
    "sglang.kernels.ops.lora.dense.sgemm_lora_a",
    "sglang.kernels.ops.lora.dense.sgemm_lora_b",
    "sglang.kernels.ops.lora.dense.qkv_lora_b",
    "sglang.kernels.ops.lora.dense.gate_up_lora_b",
    "sglang.srt.lora.utils",
    "sglang.srt.utils",
    "sglang.kernels.ops.lora.moe.fused_moe_lora_kernel",
    "sglang.srt.lora.backend.triton_backend",       # tests/kernels/test_backend_methods.py
    "sglang_mint.sglang.mint_backend",
    "sglang_mint.sglang.mint_moe",
    "sglang_mint.kernels.moe_align",                # tests/kernels/test_moe_align_cpu.py
)


def install_wheels(wheel_dir: Path, target: Path) -> tuple[list[str], dict]:
    """pip install every *.whl of wheel_dir into target, offline, no deps: (installed, {failed: why}).

    If the whole set does not install (a wheel built for another Python, say), each is
    tried alone: what installs stays, and the run says which did not.
    """
    wheels = sorted(Path(wheel_dir).glob("*.whl"))
    target.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
           "--no-cache-dir", "--disable-pip-version-check", "--target", str(target)]
    if not wheels or subprocess.run(pip + [str(w) for w in wheels]).returncode == 0:
        return [w.name for w in wheels], {}
    installed, failed = [], {}
    for w in wheels:
        done = subprocess.run(pip + [str(w)], capture_output=True, text=True)
        if done.returncode == 0:
            installed.append(w.name)
        else:
            failed[w.name] = done.stderr.strip()[-300:]
    return installed, failed


def mint_shim(dest: Path, repo: Path = REPO) -> Path:
    """dest/sglang_mint: links to the checkout's sglang_mint/* and kernels/; returns dest."""
    pkg = dest / "sglang_mint"
    pkg.mkdir(parents=True)
    for entry in (repo / "sglang_mint").iterdir():
        if entry.name not in ("__pycache__", "kernels"):
            (pkg / entry.name).symlink_to(entry)
    (pkg / "kernels").symlink_to(repo / "kernels")
    return dest


def _requirements(dist) -> list[str]:
    """Names a distribution needs on this interpreter, extras left out."""
    from packaging.requirements import Requirement

    names = []
    for line in dist.requires or []:
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            names.append(req.name)
    return names


def distributions(roots, follow=True, skip=()) -> list:
    """The installed distributions named in roots (and, with follow, all they need), less skip."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    skip = {canonicalize_name(n) for n in skip}
    seen, todo, found = set(), list(roots), []
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen or name in skip:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue  # not installed here, e.g. a CUDA wheel a CPU torch does not pull in
        found.append(dist)
        if follow:
            todo.extend(_requirements(dist))
    return found


def link_distributions(dest: Path, dists) -> Path:
    """dest holding links to the top-level files of dists only (packages, modules, dist-info)."""
    dest.mkdir(parents=True, exist_ok=True)
    for dist in dists:
        base = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in sorted(tops - {"__pycache__"}):
            link, src = dest / top, base / top
            if src.exists() and not os.path.lexists(link) and not top.endswith(".pth"):
                link.symlink_to(src)
    return dest


def simulated_image(dest: Path) -> Path:
    """The GPU image's packages, linked from this interpreter's site-packages."""
    return link_distributions(dest, distributions(IMAGE, skip=NOT_ON_IMAGE))


def carried_standin(dest: Path) -> Path:
    """CARRIED as installed here (the same pins), for a dry run that has no wheels."""
    return link_distributions(dest, distributions(CARRIED, follow=False))


def python_env(shim: Path, site: Path, image: Path | None = None) -> dict:
    """os.environ with the run's folders in front of PYTHONPATH.

    image: the simulated GPU image (dry run); then it is the whole rest of the
    path and the child must run with -S so that the virtualenv stays out.
    """
    env = dict(os.environ)
    rest = [str(image)] if image else [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join([str(shim), str(site), *rest])
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # the image's pytest plugins vs our pytest
    return env


def python_cmd(image: Path | None) -> list[str]:
    """The interpreter for a step: -S keeps this machine's site-packages out of a dry run."""
    return [sys.executable, "-S"] if image else [sys.executable]


def pretend_cuda() -> None:
    """Make torch say an H200 is there, so that SGLang's imports take their CUDA branches.

    On CUDA, SGLang imports more (`if _is_cuda: from sgl_kernel import ...`): a dry run
    that imports MODULES this way finds what the GPU machine would miss. Any real CUDA
    call still fails, and is reported like a missing module.
    """
    import torch

    torch.cuda.is_available = lambda: True
    torch.cuda.device_count = lambda: 1
    torch.cuda.get_device_capability = lambda *a, **k: (9, 0)
    torch.cuda.get_device_name = lambda *a, **k: "NVIDIA H200"


def probe(pretend: bool = False) -> dict:
    """What this interpreter sees: versions, the device, MODULES, where sglang_mint.kernels is."""
    import importlib
    import platform

    info = {"python": platform.python_version(), "executable": sys.executable}
    for name in ("torch", "triton", "transformers"):
        try:
            info[name] = importlib.import_module(name).__version__
        except Exception as e:  # noqa: BLE001 - reported, not raised
            info[name] = f"missing: {type(e).__name__}: {e}"
    import torch

    info["cuda"] = torch.cuda.is_available()
    if info["cuda"]:
        info["device"] = torch.cuda.get_device_name(0)
        info["capability"] = list(torch.cuda.get_device_capability(0))
    if pretend:
        pretend_cuda()
        info["pretend_cuda"] = True
    info["imports"] = {}
    for name in MODULES:
        try:
            importlib.import_module(name)
            info["imports"][name] = "ok"
        except BaseException as e:  # noqa: BLE001 - SystemExit included
            info["imports"][name] = f"{type(e).__name__}: {e}"[:300]
    if info["imports"]["sglang_mint.kernels"] == "ok":
        from sglang_mint.kernels import _config

        info["sglang_mint.kernels"] = sys.modules["sglang_mint.kernels"].__file__
        info["kernel_config_dir"] = str(_config.CONFIG_DIR)
    return info


if __name__ == "__main__":
    import json

    if sys.argv[1:2] != ["--probe"] or sys.argv[2:] not in ([], ["--pretend-cuda"]):
        sys.exit("usage: python bench/gpu/_env.py --probe [--pretend-cuda]")
    print(json.dumps(probe(pretend=sys.argv[2:] == ["--pretend-cuda"])))
