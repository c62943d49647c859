"""Packed revisions: `publish(..., pack=True)` / `mint catalog import|publish --pack`.

The folder is checked exactly like a PEFT import, converted with
sglang_mint.packed, and stored as two blobs (adapter_config.json,
adapter.mintpack); the view is those two files as hard links.
"""

import contextlib
import io
import json
import os

import numpy as np
import pytest
import torch
from catalog_fixtures import blob_file, overwrite_blob, peft_tensors, write_base, write_peft, written
from test_import import CASES, _bad_cases

from sglang_mint.catalog import init_catalog
from sglang_mint.catalog.errors import AdapterNotFound, RevisionConflict
from sglang_mint.cli import main
from sglang_mint.packed import PACKED_FILE, read_packed
from sglang_mint.packed.convert import unpack_tensors
from sglang_mint.packed.reader import read_header


def _source(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "adapter_model.safetensors"))


def test_packed_round_trip(cat, peft):
    folder = peft("a", rank=4, seed=3)
    rev = cat.publish("acme/a", folder, {"step": 7}, pack=True)
    assert (rev.format, rev.rank, rev.alpha, rev.dtype, rev.metadata) == ("packed", 4, 8.0, "float16", {"step": 7})
    assert set(rev.files) == {"adapter_config.json", PACKED_FILE}
    assert cat.resolve("acme/a") == rev

    view = rev.local_path()
    assert sorted(os.listdir(view)) == sorted([".mint-files.json", "adapter_config.json", PACKED_FILE])
    for name, digest in rev.files.items():  # hard links to the blobs, like the PEFT views
        assert os.stat(os.path.join(view, name)).st_ino == os.stat(blob_file(cat, digest)).st_ino
    assert rev.size_bytes == sum(os.path.getsize(os.path.join(view, n)) for n in rev.files)

    packed = read_packed(os.path.join(view, PACKED_FILE), pin=False)
    src = _source(folder)
    back = unpack_tensors(packed.mint, packed.tensors)
    assert set(back) == set(src)
    for k, t in src.items():
        assert torch.equal(back[k].view(torch.int16), t.view(torch.int16)), k  # bit-exact
    cfg = json.load(open(os.path.join(view, "adapter_config.json")))
    assert (cfg["r"], cfg["lora_alpha"]) == (rev.rank, rev.alpha)
    # the engine checks these against its model before reading any data
    base = packed.mint["base"]
    assert (base["hidden_size"], base["num_hidden_layers"], base["vocab_size"], base["identity"]) == (
        128, 2, 1000, cat.base.identity)


def test_packing_is_deterministic_and_content_addressed(cat, peft):
    folder = peft("a", rank=2, seed=5)
    one = cat.publish("x/one", folder, pack=True)
    two = cat.publish("x/two", folder, pack=True)
    assert one.files == two.files and one.content_digest == two.content_digest
    assert cat.stats()["blobs"] == 2  # config + mintpack, shared
    with pytest.raises(RevisionConflict):  # the same content again under one id
        cat.publish("x/one", folder, pack=True)
    # the PEFT form of the same folder is other content: a new revision, and rollback between forms works
    peft_rev = cat.publish("x/one", folder)
    assert (peft_rev.revision, peft_rev.format) == (2, "peft")
    assert cat.rollback("x/one").format == "packed"


def test_fused_rank_and_bf16_recorded(cat, tmp_path):
    """A q_proj-only bf16 adapter: k/v are zero-filled to the base's kv width; dtype and rank are the packed ones."""
    t = {k: torch.from_numpy(v.astype(np.float32)).to(torch.bfloat16)
         for k, v in peft_tensors(rank=3, modules=("q_proj",)).items()}
    from safetensors.torch import save_file
    folder = tmp_path / "bf"
    write_peft(folder, rank=3, modules=("q_proj",))
    save_file(t, str(folder / "adapter_model.safetensors"))  # the same tensors in bf16
    rev = cat.publish("bf", str(folder), pack=True)
    assert (rev.dtype, rev.rank, rev.target_modules) == ("bfloat16", 3, ("q_proj",))
    _, entries, mint, _ = read_header(os.path.join(rev.local_path(), PACKED_FILE))
    shapes = {e.name: e.shape for e in entries}
    assert shapes["base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight"] == [128 + 64 + 64, 3]
    assert mint["dtype"] == "BF16"


@pytest.mark.parametrize("case", CASES)
def test_bad_folder_is_refused_with_pack_and_nothing_written(case, cat, tmp_path):
    name, make, err, words = next(c for c in _bad_cases(str(tmp_path), None) if c[0] == case)
    folder = str(tmp_path / "bad" / name)
    make(folder)
    with pytest.raises(err) as info:
        cat.publish("acme/bad", folder, pack=True)
    assert words in str(info.value), str(info.value)
    assert written(cat) == (0, 0, [])


def test_per_module_scalings_are_packed_in_uniform_form(cat, tmp_path):
    """rank_pattern v_proj 2 gives v_proj scaling 8/2 = 4 beside q_proj's 8/4 = 2; SGLang has one scaling per
    adapter, so the packed revision holds the uniform form: r = lora_alpha = 4, each B times its own scaling."""
    t = peft_tensors(rank=4, modules=("q_proj", "v_proj"), dtype=np.float32, seed=5)
    rng = np.random.default_rng(6)
    for k in list(t):
        if ".v_proj." in k:
            t[k] = rng.standard_normal((2, 128) if "lora_A" in k else (64, 2)).astype(np.float32)
    folder = write_peft(tmp_path / "rp", rank=4, modules=("q_proj", "v_proj"),
                        config={"rank_pattern": {"v_proj": 2}}, tensors=t)
    rev = cat.publish("rp", folder, pack=True)
    assert (rev.rank, rev.alpha) == (4, 4.0)
    view = rev.local_path()
    cfg = json.load(open(os.path.join(view, "adapter_config.json")))
    assert (cfg["r"], cfg["lora_alpha"]) == (4, 4) and "rank_pattern" not in cfg
    p = read_packed(os.path.join(view, PACKED_FILE), pin=False)
    src_cfg = p.mint["peft_config"]  # what unpack gives back: the uniform config
    assert (src_cfg["r"], src_cfg["lora_alpha"], src_cfg.get("rank_pattern")) == (4, 4, None)
    back = unpack_tensors(p.mint, p.tensors)  # the uniform form
    for layer in range(2):
        for m, s in (("q_proj", 2.0), ("v_proj", 4.0)):
            key = f"base_model.model.model.layers.{layer}.self_attn.{m}"
            a, b = torch.from_numpy(t[key + ".lora_A.weight"]), torch.from_numpy(t[key + ".lora_B.weight"])
            ua, ub = back[key + ".lora_A.weight"], back[key + ".lora_B.weight"]
            assert ua.shape == (4, 128) and ub.shape[1] == 4
            torch.testing.assert_close(ub @ ua, s * (b @ a), rtol=1e-5, atol=1e-5)


def test_unconvertible_adapter_is_refused_and_nothing_written(cat, tmp_path):
    """Expert gate_proj and up_proj that read different widths cannot share one gate_up_proj A: the converter
    refuses them. The tiny Llama base has no experts, so the PEFT checks refuse them first, in either form,
    as widths they cannot check."""
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.packed.convert import pack_tensors
    from sglang_mint.packed.format import PackedError

    key = "base_model.model.model.layers.0.mlp.experts.0."
    rng = np.random.default_rng(7)
    t = {key + "gate_proj.lora_A.weight": rng.standard_normal((4, 77)).astype(np.float16),
         key + "gate_proj.lora_B.weight": rng.standard_normal((199, 4)).astype(np.float16),
         key + "up_proj.lora_A.weight": rng.standard_normal((4, 78)).astype(np.float16),
         key + "up_proj.lora_B.weight": rng.standard_normal((199, 4)).astype(np.float16)}
    folder = write_peft(tmp_path / "gu", rank=4, modules=("gate_proj", "up_proj"), tensors=t)
    before = written(cat)
    for pack in (False, True):
        with pytest.raises(InvalidAdapter, match="the widths of gate_proj under experts are not recorded"):
            cat.publish("gu", folder, pack=pack)
    assert written(cat) == before
    cfg = json.loads((tmp_path / "gu" / "adapter_config.json").read_text())
    with pytest.raises(PackedError, match="different input widths"):
        pack_tensors(cfg, {k: torch.from_numpy(v) for k, v in t.items()}, "gu")


def test_verify_and_gc_understand_packed_blobs(cat, peft):
    rev = cat.publish("p/a", peft("a", rank=2, seed=1), pack=True)
    keep = cat.publish("p/b", peft("b", rank=3, seed=2), pack=True)  # another rank: no blob shared
    view = rev.local_path()
    keep_view = keep.local_path()
    rep = cat.verify()
    assert rep["ok"] and rep["checked_blobs"] == 4, rep

    # a flipped byte in the packed data region is found by the re-hash
    overwrite_blob(cat, rev.files[PACKED_FILE], lambda data: data[:-1] + bytes([data[-1] ^ 0xFF]))
    rep = cat.verify()
    assert not rep["ok"] and any(rev.files[PACKED_FILE] in p and "corrupt" in p for p in rep["problems"]), rep

    # delete + gc reclaims the packed blobs and the view; the other adapter is untouched
    cat.delete("p/a")
    out = cat.gc(grace_s=0)
    assert out["removed_blobs"] == 2 and out["removed_views"] == 1, out
    assert not os.path.exists(view) and not cat.blobs.exists(rev.files[PACKED_FILE])
    assert os.path.isfile(os.path.join(keep_view, PACKED_FILE))
    with pytest.raises(AdapterNotFound):
        cat.resolve("p/a")
    rep = cat.verify()
    assert rep["ok"] and rep["checked_blobs"] == 2 and rep["unreferenced_blobs"] == 0, rep


def test_bulk_import_pack(cat, tmp_path):
    folders = [write_peft(tmp_path / "bulk" / f"ad{i}", seed=i, rank=1) for i in range(3)]
    revs = cat.import_folders(folders, namespace="team", progress=False, pack=True)
    assert [(r.adapter_id, r.format) for r in revs] == [(f"team/ad{i}", "packed") for i in range(3)]


def test_cli_import_and_publish_pack(tmp_path):
    base = write_base(tmp_path / "tiny")
    root = str(tmp_path / "cat")
    init_catalog(root, base).close()
    for i in range(2):
        write_peft(tmp_path / "in" / f"ad{i}", seed=i, rank=2)

    def mint(*args):  # in-process, as test_cli.py runs the CLI
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["catalog", *args, "--json"])
        assert rc == 0, err.getvalue()
        return json.loads(out.getvalue())

    out = mint("import", root, "--from-dir", str(tmp_path / "in"), "--namespace", "acme", "--pack", "--no-progress")
    assert [(r["adapter_id"], r["format"]) for r in out["imported"]] == [("acme/ad0", "packed"), ("acme/ad1", "packed")]
    v2 = write_peft(tmp_path / "v2", seed=9, rank=2)
    r = mint("publish", root, "acme/ad0", v2, "--pack")
    assert (r["revision"], r["format"], sorted(r["files"])) == (2, "packed", ["adapter.mintpack", "adapter_config.json"])
    assert mint("verify", root)["ok"]


def test_peft_fused_experts_are_stored_packed_and_refused_unpacked_at_load(tmp_path):
    """PEFT 0.21 writes an expert LoRA of a transformers-5 MoE model as fused experts
    (``mlp.experts.base_layer.lora_A.weight``, ``target_parameters``). SGLang files no such name: served
    as PEFT files, its pool fill raised in the scheduler's forward and the server stopped (a real
    DeepSeek server, 0d384a3). The catalog stores the form packed, by every publish path, and a
    revision an older version stored as PEFT files is refused at load, naming the fix."""
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.adapters.peft import load_for_serving
    from sglang_mint.catalog.upload import publish_files
    from sglang_mint.dev.tiny_moe import write_tiny_moe, write_tiny_moe_adapters

    model = write_tiny_moe(tmp_path / "model", "qwen3-moe", seed=0)
    fused = write_tiny_moe_adapters(model, tmp_path / "adapters", seed=0)["peft-fused"]
    config = json.loads((fused / "adapter_config.json").read_text())
    assert config["target_parameters"]  # the form under test
    with init_catalog(str(tmp_path / "catalog"), str(model)) as cat:
        by_folder = cat.publish("moe/folder", str(fused))
        files = {n: str(fused / n) for n in ("adapter_config.json", "adapter_model.safetensors")}
        by_upload = publish_files(cat, "moe/upload", files)
        assert (by_folder.format, by_upload.format) == ("packed", "packed")
        assert by_folder.content_digest == by_upload.content_digest
        dense = cat.publish("moe/dense", str(write_tiny_moe_adapters(model, tmp_path / "b", seed=1)["per-expert"]))
        assert dense.format == "peft"  # experts the engine can file keep their form
        with pytest.raises(InvalidAdapter, match="PEFT's fused-expert form .* publish it again"):
            load_for_serving(str(fused), config, cat.base, "moe/old")


@pytest.mark.parametrize("leaf, out", [("qkv_proj", 128 + 64 + 64), ("gate_up_proj", 2 * 256)])
def test_a_prestacked_module_is_refused_packed_and_kept_plain(cat, tmp_path, leaf, out):
    """Phi-3 names (qkv_proj, gate_up_proj) hold one A for every slice. Packed as they were, a real
    server's pool fill asserted on the first request ([12, 128] buffer, [4, 128] weight) and every
    tenant's server stopped. Packing refuses them; published plain, SGLang's loader stacks them."""
    from safetensors.torch import save_file

    from sglang_mint.adapters.errors import InvalidAdapter

    parent = "self_attn" if leaf == "qkv_proj" else "mlp"
    folder = tmp_path / leaf
    folder.mkdir()
    save_file({f"base_model.model.model.layers.{layer}.{parent}.{leaf}.lora_{ab}.weight":
               torch.randn(*((4, 128) if ab == "A" else (out, 4))) for layer in (0, 1) for ab in "AB"},
              str(folder / "adapter_model.safetensors"))
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": [leaf]}))
    with pytest.raises(InvalidAdapter, match=f"{leaf} is already stacked.*publish this adapter without --pack"):
        cat.publish("phi/packed", str(folder), pack=True)
    assert cat.publish("phi/plain", str(folder)).format == "peft"


def test_an_experts_only_peft_adapter_is_accepted(tmp_path):
    """PEFT 0.21 writes an adapter of a transformers-5 MoE model's experts alone with target_modules []
    and the experts in target_parameters; publish refused it ("target_modules must be a non-empty
    list"). It is stored packed, as every fused-expert adapter (on a real Qwen3-MoE server: 1.8e-4
    from HF+PEFT)."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sglang_mint.dev.tiny_moe import write_tiny_moe

    model = write_tiny_moe(tmp_path / "model", "qwen3-moe", seed=0)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32),
                          LoraConfig(r=2, lora_alpha=4, target_modules=["gate_proj", "up_proj", "down_proj"]))
    peft.save_pretrained(tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["target_modules"] == [] and config["target_parameters"]  # the form under test
    with init_catalog(str(tmp_path / "catalog"), str(model)) as cat:
        rev = cat.publish("moe/experts-only", str(tmp_path / "adapter"))
        assert rev.format == "packed" and {"gate_up_proj", "down_proj"} <= set(rev.target_modules)
