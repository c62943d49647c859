"""The tuning tables ship with a (non-editable) install and the lookup finds them there."""

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

PROBE = """
import json
from sglang_mint.kernels import _config
t = _config._load_table("sgmv_shrink", "default")
print(json.dumps({
    "module": _config.__file__,
    "config_dir": str(_config.CONFIG_DIR),
    "table_op": t.get("op"),
    "buckets": sorted(t.get("configs", {})),
    "hit": _config.get_config("sgmv_shrink", "cpu", K=4096, R=16, S=3, M=512),
}))
"""


def test_tables_are_found_in_the_installed_package(tmp_path):
    lib = tmp_path / "site-packages"
    # build_py lays out exactly what a wheel installs (packages + package_data).
    # -P: keep the checkout off sys.path, or its kernels/ would shadow the
    # `kernels` distribution that setuptools loads while building.
    subprocess.run([sys.executable, "-P", "setup.py", "-q", "build_py", "--build-lib", str(lib)],
                   cwd=REPO, check=True, capture_output=True)
    shipped = sorted(p.name for p in (lib / "sglang_mint/kernels/configs").glob("*.json"))
    assert shipped == sorted(p.name for p in (REPO / "configs/kernels").glob("*.json"))

    env = {k: v for k, v in os.environ.items() if k != "MINT_KERNEL_CONFIG_DIR"}
    env["PYTHONPATH"] = str(lib)
    out = subprocess.run([sys.executable, "-P", "-c", PROBE], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    # The installed copy, not the checkout (an editable install would point there).
    assert Path(got["module"]).is_relative_to(lib)
    assert got["config_dir"] == str(lib / "sglang_mint/kernels/configs")
    want = json.loads((REPO / "configs/kernels/sgmv_shrink__default.json").read_text())
    assert got["table_op"] == "sgmv_shrink" and got["buckets"] == sorted(want["configs"])
    assert got["hit"] == want["configs"]["K4096_R16_S3_M512"]


def test_lookup_in_this_environment(monkeypatch, tmp_path):
    from sglang_mint.kernels import _config

    monkeypatch.delenv("MINT_KERNEL_CONFIG_DIR", raising=False)
    here = Path(_config.__file__).resolve().parent
    want = REPO / "configs/kernels" if here == REPO / "kernels" else here / "configs"
    assert _config.find_config_dir() == want and sorted(want.glob("*.json"))
    monkeypatch.setenv("MINT_KERNEL_CONFIG_DIR", str(tmp_path))
    assert _config.find_config_dir() == tmp_path
