"""Download the wheels the GPU machine lacks into .whl/gpu (run where there is network).

    python bench/gpu/fetch_wheels.py [--python 3.12] [--dest .whl/gpu] [--check]

The list is _env.CARRIED, each at the version requirements.lock pins (what
this project tests with): wheels only, --no-deps, CPython <python> on
manylinux x86-64. The GPU machine's python3 was 3.12.3 when a session last
looked (2026-11); pass --python if it changed. sglang's wheel is built per
Python version, so a wrong --python means no sglang there. The folder gets a
wheels.json (the python version, each file and its size) and must stay
under WHEEL_BUDGET: the tree a device run carries is at most 64 MiB in all.

--check: download the same list again, built for THIS interpreter, install
it into a temporary folder and run _env.py --probe under `python -S` with
only that folder, the checkout shim and a simulated GPU image
(_env.simulated_image) on the path, once as is and once with torch
pretending CUDA. Each import of _env.MODULES must say ok. This is how
CARRIED was found: add the distribution behind the first missing module,
repeat.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _env  # noqa: E402

WHEEL_BUDGET = 60 * 2**20  # leaves 4 MiB of the 64 for the checkout itself (about 1 MiB)
PLATFORMS = ("manylinux_2_34_x86_64", "manylinux_2_28_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_26_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux_2_5_x86_64", "manylinux1_x86_64")


def pins(lock: Path = _env.REPO / "requirements.lock") -> list[str]:
    """'name==version' for every CARRIED name, as requirements.lock pins it."""
    from packaging.utils import canonicalize_name

    locked = {}
    for line in lock.read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==", 1)
            locked[canonicalize_name(name)] = version.strip()
    missing = [n for n in _env.CARRIED if canonicalize_name(n) not in locked]
    if missing:
        sys.exit(f"not pinned in requirements.lock: {missing}")
    return [f"{n}=={locked[canonicalize_name(n)]}" for n in _env.CARRIED]


def download(dest: Path, python: str) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    for old in dest.glob("*.whl"):
        old.unlink()  # two versions of one package would stop the install there
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--implementation", "cp", "-d", str(dest)]
    for plat in PLATFORMS:
        cmd += ["--platform", plat]
    subprocess.run(cmd + pins(), check=True)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(_env.CARRIED):
        sys.exit(f"expected {len(_env.CARRIED)} wheels, got {len(wheels)} in {dest}")
    return wheels


def manifest(dest: Path, python: str, wheels: list[Path]) -> dict:
    sizes = {w.name: w.stat().st_size for w in wheels}
    info = {"python": python, "total_bytes": sum(sizes.values()), "wheels": sizes}
    (dest / "wheels.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def check() -> int:
    """Import MODULES with only the carried wheels (built for this python) over the simulated image."""
    with tempfile.TemporaryDirectory(prefix="mint-wheels-check-") as tmp:
        tmp = Path(tmp)
        here = f"{sys.version_info.major}.{sys.version_info.minor}"
        download(tmp / "wheels", here)
        _env.install_wheels(tmp / "wheels", tmp / "site")
        env = _env.python_env(_env.mint_shim(tmp / "shim"), tmp / "site",
                              _env.simulated_image(tmp / "image"))
        bad = 0
        for how in ([], ["--pretend-cuda"]):  # as on this CPU, then as on CUDA
            out = subprocess.run([*_env.python_cmd(True), str(Path(_env.__file__)), "--probe", *how],
                                 env=env, capture_output=True, text=True)
            if out.returncode:
                print(out.stderr[-3000:])
                return 1
            imports = json.loads(out.stdout.strip().splitlines()[-1])["imports"]
            print(f"imports {' '.join(how) or '(CPU)'}:")
            for name, status in imports.items():
                print(f"  {status[:100]:>8}  {name}")
            bad += sum(s != "ok" for s in imports.values())
        return 1 if bad else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--python", default="3.12", help="the GPU machine's python3 (major.minor)")
    p.add_argument("--dest", type=Path, default=_env.WHEELS)
    p.add_argument("--check", action="store_true", help="also check the import closure here")
    args = p.parse_args(argv)
    info = manifest(args.dest, args.python, download(args.dest, args.python))
    print(f"{len(info['wheels'])} wheels for python {args.python}: "
          f"{info['total_bytes'] / 2**20:.1f} MiB in {args.dest}")
    if info["total_bytes"] > WHEEL_BUDGET:
        print(f"over the budget of {WHEEL_BUDGET / 2**20:.0f} MiB", file=sys.stderr)
        return 1
    return check() if args.check else 0


if __name__ == "__main__":
    sys.exit(main())
