"""Routes: which dense kernels (ours or SGLang's Triton backend) run per shape class.

kernels/routes.py (key and lookup), bench/gpu/routes.py (the table from a
kernel_bench run) and the shipped tables. The backend's use of a route is in
test_backend_methods.py (it needs sglang).
"""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sglang_mint.kernels import _config, routes

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def config_dir(tmp_path, monkeypatch):
    """An empty config dir in place of configs/kernels; tables written to it are read fresh."""
    monkeypatch.setattr(_config, "CONFIG_DIR", tmp_path)
    routes.clear_cache()
    yield tmp_path
    routes.clear_cache()


def write_table(folder, device, table):
    (folder / f"routes__{device}.json").write_text(json.dumps(
        {"device": device, "git_commit": "test", "source": "test", "routes": table}))
    routes.clear_cache()


@pytest.mark.parametrize("args, key", [
    ((3, 4096, 16, "decode"), "S3_K4096_R16_decode"),       # llama3-8B qkv
    ((1, 14336, 12, "prefill"), "S1_K16384_R16_prefill"),   # llama3-8B down, rank 12
    ((2, 7168, 64, "decode"), "S2_K8192_R64_decode"),       # DeepSeek q_a + kv_a
    ((1, 2049, 1, "prefill"), "S1_K4096_R1_prefill"),       # odd width, rank 1
    ((2, 4096, 8, "prefill"), "S2_K4096_R8_prefill"),       # gate_up
])
def test_route_key(args, key):
    assert routes.route_key(*args) == key


def test_route_key_rejects_an_unknown_mode():
    with pytest.raises(ValueError):
        routes.route_key(1, 4096, 16, "extend")


def test_lookup_with_a_table(config_dir):
    write_table(config_dir, "NVIDIA_H200", {"S3_K4096_R16_decode": "sglang_triton",
                                            "S3_K4096_R16_prefill": "mint"})
    assert routes.has_table("NVIDIA_H200")
    # 4000 and 12 fall in the 4096 / 16 class
    assert routes.route_for("NVIDIA_H200", 3, 4000, 12, "decode") == "sglang_triton"
    assert routes.route_for("NVIDIA_H200", 3, 4096, 16, "prefill") == "mint"
    assert routes.route_for("NVIDIA_H200", 3, 4096, 32, "decode") == "mint"   # not in the table
    assert routes.route_for("NVIDIA_H200", 1, 4096, 16, "decode") == "mint"
    line = routes.summary("NVIDIA_H200")
    assert str(config_dir / "routes__NVIDIA_H200.json") in line
    assert "(1 shape classes to SGLang's Triton kernels)" in line
    # another device has no table: ours everywhere
    assert not routes.has_table("NVIDIA_H100_80GB_HBM3")
    assert routes.route_for("NVIDIA_H100_80GB_HBM3", 3, 4096, 16, "decode") == "mint"


def test_a_torch_device_is_looked_up_by_its_device_key(config_dir):
    assert not routes.has_table(torch.device("cpu"))
    assert routes.route_for(torch.device("cpu"), 3, 4096, 16, "decode") == "mint"
    assert routes.summary("cpu") == "no measured table for cpu: our kernels everywhere"
    write_table(config_dir, "cpu", {"S3_K4096_R16_decode": "sglang_triton"})
    assert routes.has_table(torch.device("cpu")) and routes.has_table("cpu")
    assert routes.route_for(torch.device("cpu"), 3, 4096, 16, "decode") == "sglang_triton"


def test_a_table_is_read_once(config_dir):
    write_table(config_dir, "cpu", {"S1_K64_R8_decode": "sglang_triton"})
    assert routes.route_for("cpu", 1, 64, 8, "decode") == "sglang_triton"
    (config_dir / "routes__cpu.json").unlink()
    assert routes.route_for("cpu", 1, 64, 8, "decode") == "sglang_triton"   # cached
    routes.clear_cache()
    assert routes.route_for("cpu", 1, 64, 8, "decode") == "mint"


def test_a_table_with_an_unknown_kernel_is_refused(config_dir):
    write_table(config_dir, "cpu", {"S1_K64_R8_decode": "sglang_csgmv"})
    with pytest.raises(ValueError, match="sglang_csgmv"):
        routes.route_for("cpu", 1, 64, 8, "decode")


def test_shipped_route_tables():
    files = sorted(_config.CONFIG_DIR.glob("routes__*.json"))
    for f in files:
        table = json.loads(f.read_text())
        assert f.name == f"routes__{table['device']}.json"
        assert table["git_commit"] and table["source"] and table["routes"]
        for key, choice in table["routes"].items():
            S, K, R, mode = key.split("_")
            assert routes.route_key(int(S[1:]), int(K[1:]), int(R[1:]), mode) == key
            assert choice in routes.CHOICES


# ---- bench/gpu/routes.py ------------------------------------------------

def load_bench_routes():
    spec = importlib.util.spec_from_file_location("bench_gpu_routes", REPO / "bench/gpu/routes.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def row(layer, hidden, widths, mode, n, rank, variant, ms, graph_ms=None, status="ok",
        check="ok", model="m"):
    r = {"kind": "kernel", "model": model, "layer": layer, "hidden": hidden,
         "slice_widths": widths, "experts": 0, "top_k": 0, "mode": mode,
         "tokens": 64 if mode == "decode" else 2048, "adapters": n, "rank": rank,
         "device": "NVIDIA H200", "git_commit": "abc1234", "variant": variant, "status": status}
    if status == "ok":
        r.update(check=check, ms=ms)
        if graph_ms is not None:
            r["graph_ms"] = graph_ms
    else:
        r["why"] = "synthetic"
    return r


def synthetic_rows():
    rows = [{"kind": "ceilings", "copy_bytes_per_s": 4e12, "device": "NVIDIA H200"}]
    qkv = ("qkv", 4096, [4096, 1024, 1024])
    for n in (1, 8, 64):
        # decode: SGLang's graph_ms is faster; its plain ms (and ours_fused, which is not
        # the serving path, and ours_sgmv) would say otherwise
        rows += [row(*qkv, "decode", n, 16, "ours_bgmv", 0.010, 0.030),
                 row(*qkv, "decode", n, 16, "ours_fused", 0.001, 0.001),
                 row(*qkv, "decode", n, 16, "ours_sgmv", 0.001, 0.001),
                 row(*qkv, "decode", n, 16, "sglang_csgmv", 0.001, 0.001),
                 row(*qkv, "decode", n, 16, "sglang_triton", 0.050, 0.020)]
        # prefill, rank 8: SGLang is faster but wrong at 8 adapters -> ours
        rows += [row(*qkv, "prefill", n, 8, "ours_sgmv", 0.100),
                 row(*qkv, "prefill", n, 8, "sglang_triton", 0.010,
                     status="wrong" if n == 8 else "ok", check="FAIL" if n == 8 else "ok")]
        # prefill, rank 64: SGLang unavailable at 64 adapters -> ours
        rows += [row(*qkv, "prefill", n, 64, "ours_sgmv", 0.100),
                 row(*qkv, "prefill", n, 64, "sglang_triton", 0.010,
                     status="unavailable" if n == 64 else "ok")]
    # o (single projection), prefill rank 16: the arithmetic mean favours SGLang
    # (34.0 against 11.3 us), the geometric mean ours (4.64 against 4.93 us)
    for n, ours, theirs in ((1, 0.001, 0.002), (8, 0.001, 0.002), (64, 0.100, 0.030)):
        rows += [row("o", 4096, [4096], "prefill", n, 16, "ours_sgmv", ours),
                 row("o", 4096, [4096], "prefill", n, 16, "sglang_triton", theirs)]
    # expert rows are not dense: never in the table
    rows.append({**row("experts_down", 768, [2048], "decode", 8, 16, "ours_moe", 0.1),
                 "experts": 128, "top_k": 8})
    return rows


def test_bench_routes_picks_the_faster_and_refuses_a_failing_kernel(tmp_path, capsys):
    bench = load_bench_routes()
    src = tmp_path / "kernel_bench.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in synthetic_rows()))
    assert bench.main([str(src), "--out", str(tmp_path / "out")]) == 0
    table = json.loads((tmp_path / "out" / "routes__NVIDIA_H200.json").read_text())
    assert table["device"] == "NVIDIA_H200" and table["git_commit"] == "abc1234"
    assert table["source"] == "kernel_bench.jsonl"
    assert table["routes"] == {
        "S3_K4096_R16_decode": "sglang_triton",
        "S3_K4096_R8_prefill": "mint",
        "S3_K4096_R64_prefill": "mint",
        "S1_K4096_R16_prefill": "mint",
    }
    printed = capsys.readouterr().out
    assert "sglang_triton wrong at m/qkv n=8" in printed
    assert "sglang_triton unavailable at m/qkv n=64" in printed
    decode = next(line for line in printed.splitlines() if line.startswith("S3_K4096_R16_decode"))
    assert decode.split()[1:5] == ["3", "30.0", "20.0", "sglang_triton"]   # graph_ms, in us


def test_bench_routes_reads_several_runs_as_one(tmp_path):
    """Ranks split over files, as the 2026-12-04 H200 check wrote them; a later wrong row vetoes."""
    bench = load_bench_routes()
    rows = synthetic_rows()
    first, second = tmp_path / "run1.jsonl", tmp_path / "run2.jsonl"
    first.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("rank") != 16))
    late_fail = row("qkv", 4096, [4096, 1024, 1024], "decode", 64, 16, "sglang_triton", 0,
                    status="failed")
    second.write_text("".join(json.dumps(r) + "\n" for r in rows if r.get("rank") == 16)
                      + json.dumps(late_fail) + "\n")
    assert bench.main([str(first), str(second), "--out", str(tmp_path)]) == 0
    table = json.loads((tmp_path / "routes__NVIDIA_H200.json").read_text())
    assert table["source"] == "run1.jsonl, run2.jsonl"
    assert table["routes"]["S3_K4096_R16_decode"] == "mint"
    assert table["routes"]["S1_K4096_R16_prefill"] == "mint"


def test_bench_routes_a_run_that_died_before_sglang_triton_vetoes(tmp_path):
    """kernel_bench writes a variant-less failed row when a worker dies mid-shape."""
    bench = load_bench_routes()
    rows = synthetic_rows()
    died = row("qkv", 4096, [4096, 1024, 1024], "decode", 8, 16, None, 0, status="failed")
    # after sglang_triton's row: the death was elsewhere (base_gemm), the class keeps its route
    entries = {e["key"]: e for e in bench.derive(rows + [died])}
    assert entries["S3_K4096_R16_decode"]["choice"] == "sglang_triton"
    # no sglang_triton row in that case: it may have been the one that died
    rows = [r for r in rows if not (r.get("adapters") == 8 and r.get("rank") == 16
                                    and r.get("variant") == "sglang_triton")]
    entries = {e["key"]: e for e in bench.derive(rows + [died])}
    assert entries["S3_K4096_R16_decode"]["choice"] == "mint"
    assert "died at m/qkv n=8" in entries["S3_K4096_R16_decode"]["why"]
