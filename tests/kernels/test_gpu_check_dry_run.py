"""The GPU check (bench/gpu/run.py) up to its first CUDA call, on CPU, offline.

One dry run for the module: the children run under `python -S` over a
simulated GPU image (only torch, triton, numpy, safetensors, transformers,
peft, torchvision and what they need), with this virtualenv's copies of the
carried distributions standing in for the wheels (.whl/ is git-ignored, so
CI has none) and sglang_mint from the shim of links. What it proves: every
import the GPU run needs resolves there, the gpu tests collect, every
kernel_bench row is planned, and each variant, ours and SGLang's, computes
the reference's delta on a small shape of each layer kind (Triton
interpreter, fp32).
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
GPU = REPO / "bench" / "gpu"
sys.path.insert(0, str(GPU))
import _env  # noqa: E402
import fetch_wheels  # noqa: E402
from hung import HUNG_AFTER_S

# (model, layer) of every kernel_bench layer; variants per kind and mode
LAYERS = {("llama3_8b", n) for n in ("qkv", "o", "gate_up", "down")} | \
         {("qwen3_30b_a3b", n) for n in ("qkv", "o", "experts_gate_up", "experts_down")} | \
         {("deepseek_v3", n) for n in ("mla_qkv_a", "o", "experts_gate_up", "experts_down")}
DENSE = {"prefill": {"ours_sgmv", "sglang_csgmv", "sglang_triton", "base_gemm"},
         "decode": {"ours_sgmv", "ours_bgmv", "ours_fused", "sglang_csgmv", "sglang_triton", "base_gemm"}}
EXPERTS = {"ours_moe", "sglang_fused_moe_lora", "ours_moe_planned", "ours_moe_torch_plan"}


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-dry-run")
    no_wheels = tmp_path_factory.mktemp("no-wheels")
    proc = subprocess.run([sys.executable, str(GPU / "run.py"), str(out), "--dry-run", "--wheels", str(no_wheels),
                           "--steps", "env,tests,h2d,tune,kernels"],
                          cwd=REPO, capture_output=True, text=True, timeout=HUNG_AFTER_S)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    return out


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_every_step_ran_and_used_the_simulated_machine(dry):
    summary = json.loads((dry / "summary.json").read_text())
    assert summary["dry_run"] and list(summary["steps"]) == ["env", "tests", "h2d", "tune", "kernels"]
    assert all(step["rc"] == 0 for step in summary["steps"].values()), summary["steps"]
    assert summary["setup"]["simulated_image"] and summary["setup"]["wheels"] == []
    assert not Path(summary["setup"]["temp"]).exists()  # the temporary folder is gone


def test_imports_resolve_through_the_shim_as_on_cuda(dry):
    env = json.loads((dry / "env.json").read_text())
    # with torch pretending an H200, SGLang takes its CUDA-only import branches too
    assert env["pretend_cuda"] and env["cuda"] is False
    assert env["imports"] == {name: "ok" for name in _env.MODULES}
    # our package comes from the shim (not the checkout's root, not an editable install),
    # and the kernels' tuning tables are found through its links
    assert Path(env["sglang_mint.kernels"]).parts[-4:] == ("shim", "sglang_mint", "kernels", "__init__.py")
    assert env["kernel_config_dir"] == str(REPO / "configs" / "kernels")


def test_gpu_tests_collect_without_errors(dry):
    result = json.loads((dry / "summary.json").read_text())["steps"]["tests"]["result"]
    collected = int(result.split("/")[0])
    assert collected >= 40 and "error" not in result, result


def test_files_left_out_of_the_gpu_tests_hold_none():
    import run

    for path in run.NOT_COLLECTED:
        assert "mark.gpu" not in (REPO / path).read_text(), path


def test_every_kernel_row_is_planned_once(dry):
    planned = [r for r in rows(dry / "kernel_bench.jsonl") if r["status"] == "planned"]
    shapes = Counter((r["model"], r["layer"], r["mode"], r["adapters"], r["rank"]) for r in planned)
    assert {(m, l) for m, l, *_ in shapes} == LAYERS
    assert len(shapes) == len(LAYERS) * 2 * 3 * 3
    for (model, layer, mode, n, rank), count in shapes.items():
        want = EXPERTS if layer.startswith("experts") else DENSE[mode]
        got = {r["variant"] for r in planned if (r["model"], r["layer"], r["mode"], r["adapters"], r["rank"])
               == (model, layer, mode, n, rank)}
        assert got == want and count == len(want), (model, layer, mode, got)
    assert {r["adapters"] for r in planned} == {1, 8, 64} and {r["rank"] for r in planned} == {8, 16, 64}
    # one row per variant, never a ratio to another row
    assert not any(k.startswith(("speedup", "vs_")) for r in planned for k in r)


def test_every_variant_matches_the_reference_on_small_shapes(dry):
    ran = [r for r in rows(dry / "kernel_bench.jsonl") if r["model"] == "tiny"]
    assert {r["layer"] for r in ran} == {"qkv", "gate_up", "mla_qkv_a", "o", "experts_gate_up", "experts_down"}
    assert {r["variant"] for r in ran} == DENSE["decode"] | EXPERTS
    for r in ran:
        assert r["status"] == "ok", r
        if r["variant"] != "base_gemm":
            assert r["check"] == "ok" and r["rel_err"] < 1e-4, r  # fp32 under the interpreter
            assert r["bytes"] > 0 and r["flops"] > 0


def test_every_tuning_candidate_matches_the_reference(dry):
    """tune.py's dry run: each candidate config of each dense op, on shapes whose K splits."""
    got = rows(dry / "tune.jsonl")
    assert {(r["op"], r["mode"]) for r in got} == {
        (op, mode) for op in ("sgmv_shrink", "sgmv_expand") for mode in ("prefill", "decode")}
    assert {r["layer"] for r in got} >= {"qkv_long_k", "o_long_k"}
    assert all(r["status"] == "ok" and r["rel_err"] < 1e-5 for r in got), [
        r for r in got if r["status"] != "ok"][:3]
    assert not (dry / "configs").exists()  # a dry run writes no table


def test_h2d_variants_ran_and_copies_are_exact(dry):
    got = rows(dry / "h2d_load.jsonl")
    assert [(r["setup"]["adapter"], r["variant"]) for r in got] == [
        (a, v) for a in ("dense", "moe")
        for v in ("peft_h2d", "packed_h2d", "peft_file_to_gpu", "packed_file_to_gpu", "pinned_copy")]
    assert all(r["setup"]["copies_equal"] and r["status"] == "dry-run" for r in got)


def fake_wheel(folder: Path, name: str, tag: str = "py3-none-any") -> str:
    file = f"{name}-1.0-{tag}.whl"
    info = f"{name}-1.0.dist-info"
    with zipfile.ZipFile(folder / file, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return file


def test_wheels_install_offline_and_a_bad_one_is_reported(tmp_path):
    """install_wheels: pip --no-index --no-deps --target; a wheel for another Python stays out."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    good = fake_wheel(wheels, "mintprobe")
    bad = fake_wheel(wheels, "mintother", "cp27-cp27mu-manylinux1_x86_64")
    installed, failed = _env.install_wheels(wheels, tmp_path / "site")
    assert installed == [good] and list(failed) == [bad] and failed[bad]
    assert (tmp_path / "site" / "mintprobe" / "__init__.py").read_text() == "VALUE = 42\n"
    assert not (tmp_path / "site" / "mintother").exists()


def test_every_carried_wheel_is_pinned_by_the_lock():
    pins = fetch_wheels.pins()
    assert len(pins) == len(_env.CARRIED) and pins[0] == "sglang==0.5.23"
    assert all("==" in p for p in pins)
