"""The Triton-or-reference dispatch and the tuning-table lookup."""

import json

import pytest
import torch

from kernel_cases import assert_close, poison, randn
from sglang_mint.kernels import LoraBatch, _config, dispatch, sgmv_shrink_ref


def test_cpu_without_interpreter_runs_the_reference(monkeypatch):
    """`--device cpu` without TRITON_INTERPRET: never touches Triton."""
    monkeypatch.setattr(dispatch, "INTERPRET", False)

    def boom(*a, **k):
        raise AssertionError("Triton launcher called on CPU without the interpreter")

    monkeypatch.setattr(dispatch, "sgmv_shrink", boom)
    monkeypatch.setattr(dispatch, "moe_lora", boom)
    gen = torch.Generator().manual_seed(0)
    batch = LoraBatch.from_segments([3, 2], [1, -1], [4, 2], [1.0, 0.5])
    x, a = randn(5, 16, gen=gen), randn(2, 8, 16, gen=gen)
    y, want = poison(5, 8), poison(5, 8)
    dispatch.lora_shrink(x, a, y, batch, n_slices=2)
    sgmv_shrink_ref(x, a, want, batch, 2)
    assert_close(y, want)
    assert not torch.isnan(y[:3, :4]).any() and torch.isnan(y[3:]).all()


@pytest.mark.interp
def test_interpreter_on_runs_triton(monkeypatch):
    called = []
    real = dispatch.sgmv_shrink
    monkeypatch.setattr(dispatch, "sgmv_shrink", lambda *a: called.append(1) or real(*a))
    batch = LoraBatch.from_token_slots([0, 1], [4, 4], [1.0, 1.0])
    dispatch.lora_shrink(randn(2, 16), randn(2, 4, 16), poison(2, 4), batch)
    assert called


def test_config_lookup_order(tmp_path, monkeypatch):
    monkeypatch.setattr(_config, "CONFIG_DIR", tmp_path)
    _config.reload_tables()
    try:
        bucket = _config.shape_bucket(K=4000, R=12, S=3, M=1)
        assert bucket == "K4096_R16_S3_M1"
        # miss everywhere -> heuristic
        assert _config.get_config("sgmv_shrink", "cpu", K=4000, R=12, S=3, M=1) == \
            _config._heuristic("sgmv_shrink", 4000, 12, 3, 1)
        (tmp_path / "sgmv_shrink__default.json").write_text(json.dumps(
            {"default": {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 64}}))
        (tmp_path / "sgmv_shrink__cpu.json").write_text(json.dumps(
            {"configs": {bucket: {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 128}}}))
        _config.reload_tables()
        assert _config.get_config("sgmv_shrink", "cpu", K=4000, R=12, S=3, M=1)["BLOCK_M"] == 32
        assert _config.get_config("sgmv_shrink", "cpu", K=64, R=12, S=3, M=1)["BLOCK_N"] == 32
    finally:
        _config.reload_tables()


def test_shipped_tables_parse_and_have_readme():
    files = sorted(_config.CONFIG_DIR.glob("*.json"))
    assert files, "configs/kernels holds at least the default tables"
    for f in files:
        table = json.loads(f.read_text())
        assert "README" in table and "device" in table and "op" in table, f
        for cfg in list(table.get("configs", {}).values()) + [table.get("default", {})]:
            for key in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
                if key in cfg:
                    assert cfg[key] >= 16 and cfg[key] & (cfg[key] - 1) == 0, (f, cfg)
