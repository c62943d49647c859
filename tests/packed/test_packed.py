"""Converter, writer and reader: bit-exact round trips, layouts, the fused form, bad files."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from packed_layouts import E, R, write_layout
from sglang_mint.packed import PACKED_FILE, PackedError, read_packed
from sglang_mint.packed.convert import pack_folder, unpack_folder, unpack_tensors
from sglang_mint.packed.reader import read_header

LAYOUTS = ["per_expert", "w123", "packed3d", "shared_outer", "mla"]


def _roundtrip(src, tmp_path, **kw):
    packed = tmp_path / "packed"
    pack_folder(str(src), str(packed), **kw)
    out = unpack_folder(str(packed), str(tmp_path / "unpacked"))
    a = load_file(str(src / "adapter_model.safetensors"))
    b = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and a[k].shape == b[k].shape, k
        assert torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k  # bit-exact, NaN-safe
    return read_packed(str(packed / PACKED_FILE), pin=False)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_roundtrip_bit_exact(layout, dtype, tmp_path):
    p = _roundtrip(write_layout(tmp_path / "src", layout, dtype=dtype), tmp_path)
    names = list(p.tensors)
    pre = "base_model.model.model.layers.0."
    assert pre + "self_attn.qkv_proj.lora_A.weight" in names  # q + zero k + v, fused
    assert p.tensors[pre + "self_attn.qkv_proj.lora_A.weight"].shape == (3 * R, 32)
    if layout in ("per_expert", "w123", "packed3d"):
        assert p.tensors[pre + "mlp.experts.gate_up_proj.lora_A.weight"].shape == (E, 2 * R, 32)
        assert p.tensors[pre + "mlp.experts.gate_up_proj.lora_B.weight"].shape == (E, 48, R)
        assert p.tensors[pre + "mlp.experts.down_proj.lora_B.weight"].shape == (E, 32, R)
    if layout == "shared_outer":
        assert p.tensors[pre + "mlp.experts.gate_up_proj.lora_A.weight"].shape == (1, 2 * R, 32)
        assert p.tensors[pre + "mlp.experts.down_proj.lora_B.weight"].shape == (1, 32, R)
    if layout == "mla":
        assert p.tensors[pre + "self_attn.fused_qkv_a_proj_with_mqa.lora_B.weight"].shape == (56, R)
        assert pre + "self_attn.indexer.wk.lora_A.weight" in names
    # layer order: every layer-0 tensor before any layer-1 tensor
    layers = [int(n.split("layers.")[1].split(".")[0]) for n in names]
    assert layers == sorted(layers)


def test_per_expert_values_land_in_their_expert(tmp_path):
    src = write_layout(tmp_path / "src", "w123")
    p = _roundtrip(src, tmp_path)
    a = load_file(str(src / "adapter_model.safetensors"))
    pre = "base_model.model.model.layers.1.mlp.experts."
    gu = p.tensors[pre + "gate_up_proj.lora_A.weight"]
    assert torch.equal(gu[2, :R], a[pre + "2.w1.lora_A.weight"])
    assert torch.equal(gu[2, R:], a[pre + "2.w3.lora_A.weight"])
    assert torch.equal(p.tensors[pre + "down_proj.lora_B.weight"][3], a[pre + "3.w2.lora_B.weight"])


def test_peft_fused_experts_same_delta_as_peft(peft_fused, tmp_path):
    src, base, model = peft_fused
    p = _roundtrip(src, tmp_path, base_dir=str(base))
    assert p.mint["base"]["num_experts"] == E and p.mint["base"]["model_type"] == "qwen3_moe"
    assert p.rank == 2 * R  # PEFT gives fused gate_up_proj rank 2r; the rest is zero-padded to it
    scaling = p.alpha / p.rank
    for layer in range(2):
        experts = model.base_model.model.model.layers[layer].mlp.experts
        pre = f"base_model.model.model.layers.{layer}.mlp.experts."
        A, B = p.tensors[pre + "gate_up_proj.lora_A.weight"], p.tensors[pre + "gate_up_proj.lora_B.weight"]
        inter = B.shape[1] // 2
        ours = torch.cat([B[:, :inter] @ A[:, :p.rank], B[:, inter:] @ A[:, p.rank:]], dim=1) * scaling
        # PEFT's own delta for the inner wrapper (gate_up_proj), [E, 2*inter, hidden]
        wrapper = experts if experts.parameter_name == "gate_up_proj" else experts.base_layer
        torch.testing.assert_close(ours, wrapper.get_delta_weight("default"), rtol=1e-5, atol=1e-6)


def test_valid_safetensors_and_page_aligned(tmp_path):
    pack_folder(str(write_layout(tmp_path / "src", "packed3d")), str(tmp_path / "p"))
    path = str(tmp_path / "p" / PACKED_FILE)
    data_start, entries, mint, size = read_header(path)
    assert data_start % 4096 == 0 and mint["version"] == 1
    with safe_open(path, "pt") as f:
        assert f.metadata()["mint_format"] == "mintpack/1"
        p = read_packed(path, pin=False)
        for k in f.keys():
            assert torch.equal(f.get_tensor(k), p.tensors[k])
    # tensors are views of ONE buffer
    assert all(t.untyped_storage().data_ptr() == p.buffer.untyped_storage().data_ptr() for t in p.tensors.values())
    cfg = json.loads((tmp_path / "p" / "adapter_config.json").read_text())
    assert cfg["r"] == mint["rank"] and "target_parameters" not in cfg


def test_missing_expert_is_named(tmp_path):
    src = write_layout(tmp_path / "src", "per_expert")
    t = load_file(str(src / "adapter_model.safetensors"))
    del t["base_model.model.model.layers.1.mlp.experts.2.up_proj.lora_A.weight"]
    del t["base_model.model.model.layers.1.mlp.experts.2.up_proj.lora_B.weight"]
    from safetensors.torch import save_file
    save_file(t, str(src / "adapter_model.safetensors"))
    with pytest.raises(PackedError, match=r"layers\.1\.mlp\.experts\.gate_up_proj slot 1 is missing expert\(s\) \[2\]"):
        pack_folder(str(src), str(tmp_path / "p"))


def _packed(tmp_path):
    pack_folder(str(write_layout(tmp_path / "src", "packed3d")), str(tmp_path / "p"))
    return tmp_path / "p" / PACKED_FILE


def test_truncated_data_region(tmp_path):
    path = _packed(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(PackedError, match=rf"{path}: truncated data region"):
        read_packed(str(path), pin=False)


@pytest.mark.parametrize("damage,match", [
    (lambda d: struct.pack("<Q", 1 << 40) + d[8:], "corrupt header: it claims"),
    (lambda d: d[:8] + b"{not json" + d[17:], "corrupt header: not JSON"),
    (lambda d: d[:5], "truncated"),
    (lambda d: d.replace(b'"dtype":"F32"', b'"dtype":"I64"', 1), "dtype I64"),
    (lambda d: d.replace(b"mintpack/1", b"mintpack/9", 1), "not a mintpack/1 file"),
    (lambda d: d + b"\0" * 64, "trailing bytes"),
])
def test_corrupt_files_are_clear_errors(tmp_path, damage, match):
    path = _packed(tmp_path)
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(PackedError, match=match) as err:
        read_packed(str(path), pin=False)
    assert str(path) in str(err.value)


def test_mint_pack_cli(tmp_path):
    from sglang_mint.cli import main

    src = write_layout(tmp_path / "src", "per_expert")
    assert main(["pack", str(src), str(tmp_path / "p")]) == 0
    assert main(["pack", "--unpack", str(tmp_path / "p"), str(tmp_path / "u")]) == 0
    assert main(["pack", str(tmp_path / "nope"), str(tmp_path / "q")]) == 2


def test_unpack_tensors_ignores_padding(tmp_path):
    p = _roundtrip(write_layout(tmp_path / "src", "mla"), tmp_path)
    src = unpack_tensors(p.mint, p.tensors)
    assert not any("qkv_proj" in k or "fused_qkv_a" in k for k in src)


def _set_config(folder, **changes):
    p = folder / "adapter_config.json"
    p.write_text(json.dumps({**json.loads(p.read_text()), **changes}))


@pytest.mark.parametrize("layout", ["per_expert", "packed3d", "mla"])
def test_rslora_with_one_scaling_stays_bit_exact(layout, tmp_path):
    """use_rslora, no patterns: every module has alpha/sqrt(r) = 8/2 = 4, so the tensors are stored unchanged
    and the packed config says lora_alpha = 4 * R with use_rslora false (SGLang reads lora_alpha / r only)."""
    src = write_layout(tmp_path / "src", layout)
    _set_config(src, use_rslora=True)
    p = _roundtrip(src, tmp_path)  # bit-exact back
    cfg = json.loads((tmp_path / "packed" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (R, 4.0 * R, False)
    assert p.alpha / p.rank == 4.0 and p.mint["peft_config"]["use_rslora"] is True


def test_mixed_scalings_pack_and_unpack_the_uniform_form(tmp_path):
    """alpha_pattern gives down_proj 2/4 beside 8/4 elsewhere: the converter packs uniform_lora's form, and
    unpack gives back exactly that (config and tensors), not the folder that was packed."""
    from sglang_mint.adapters.uniform_rank import uniform_lora

    src = write_layout(tmp_path / "src", "packed3d")
    _set_config(src, alpha_pattern={"down_proj": 2})
    cfg = json.loads((src / "adapter_config.json").read_text())
    ucfg, ut = uniform_lora(cfg, load_file(str(src / "adapter_model.safetensors")))
    pack_folder(str(src), str(tmp_path / "packed"))
    p = read_packed(str(tmp_path / "packed" / PACKED_FILE), pin=False)
    assert (p.rank, p.alpha) == (R, float(R))
    out = unpack_folder(str(tmp_path / "packed"), str(tmp_path / "unpacked"))
    assert json.loads(open(os.path.join(out, "adapter_config.json")).read()) == ucfg
    back = load_file(os.path.join(out, "adapter_model.safetensors"))
    assert back.keys() == ut.keys() and all(torch.equal(back[k], ut[k]) for k in ut)
    key = "base_model.model.model.layers.0.mlp.experts.down_proj.lora_B.weight"
    assert torch.equal(back[key], load_file(str(src / "adapter_model.safetensors"))[key] * 0.5)


def test_a_config_without_lora_alpha_packs_with_peft_default(tmp_path):
    """PEFT's LoraConfig defaults lora_alpha to 8 (publish stores that, adapters/peft.py): the packed
    form scales by 8 / r like it, not by r / r."""
    src = write_layout(tmp_path / "src", "packed3d")
    cfg = json.loads((src / "adapter_config.json").read_text())
    del cfg["lora_alpha"]
    (src / "adapter_config.json").write_text(json.dumps(cfg))
    pack_folder(str(src), str(tmp_path / "packed"))
    p = read_packed(str(tmp_path / "packed" / PACKED_FILE), pin=False)
    assert p.alpha / p.rank == 8 / R != 1.0
