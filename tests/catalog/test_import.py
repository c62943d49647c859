"""Every bad adapter folder is refused with a message naming the problem, and nothing is written."""

import json
import os
import struct

import numpy as np
import pytest
from catalog_fixtures import SHAPES, peft_tensors, write_base, write_peft, written

from sglang_mint.adapters.errors import BaseModelMismatch, InvalidAdapter
from sglang_mint.adapters.peft import read_peft_folder
from sglang_mint.catalog.errors import InvalidAdapterId


def test_good_folder_imports_and_reads_back(cat, peft):
    folder = peft("a", rank=4, seed=3)
    rev = cat.publish("acme/a", folder, {"step": 100})
    assert (rev.revision, rev.rank, rev.alpha, rev.dtype, rev.format) == (1, 4, 8.0, "float16", "peft")
    assert set(rev.target_modules) == set(SHAPES)
    assert rev.metadata == {"step": 100}
    path = rev.local_path()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        with open(os.path.join(folder, name), "rb") as a, open(os.path.join(path, name), "rb") as b:
            assert a.read() == b.read()
    assert rev.size_bytes == sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder))


def _mutate_config(folder, **changes):
    p = os.path.join(folder, "adapter_config.json")
    cfg = json.load(open(p))
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    json.dump(cfg, open(p, "w"))


def _bad_cases(tmp, base_dir):
    """(name, folder maker, error class, words in the message)."""
    def rank(r):
        def make(f):
            write_peft(f)
            _mutate_config(f, r=r)
        return make

    def remove(name):
        return lambda f: (write_peft(f), os.remove(os.path.join(f, name)))

    def bin_only(f):
        write_peft(f)
        os.rename(os.path.join(f, "adapter_model.safetensors"), os.path.join(f, "adapter_model.bin"))

    def truncated(f):
        write_peft(f)
        p = os.path.join(f, "adapter_model.safetensors")
        data = open(p, "rb").read()
        open(p, "wb").write(data[:-100])

    def corrupt_header(f):
        write_peft(f)
        p = os.path.join(f, "adapter_model.safetensors")
        data = bytearray(open(p, "rb").read())
        data[8:12] = b"\xff\xfe{x"
        open(p, "wb").write(bytes(data))

    def huge_header_len(f):
        write_peft(f)
        p = os.path.join(f, "adapter_model.safetensors")
        data = open(p, "rb").read()
        open(p, "wb").write(struct.pack("<Q", 10**12) + data[8:])

    def malformed_json(f):
        write_peft(f)
        open(os.path.join(f, "adapter_config.json"), "w").write('{"peft_type": "LORA", "r": ')

    def wrong_rank_shapes(f):
        write_peft(f, rank=4, tensors=peft_tensors(rank=8))

    def other_base_shapes(f):  # an adapter for a hidden-256 model
        big = {m: tuple(256 if d == 128 else d for d in s) for m, s in SHAPES.items()}
        write_peft(f, tensors=peft_tensors(shapes=big))

    def untargeted_module(f):
        write_peft(f, modules=("q_proj",), tensors=peft_tensors(modules=("q_proj", "v_proj")))

    def missing_target(f):
        write_peft(f, modules=("q_proj", "v_proj"), tensors=peft_tensors(modules=("q_proj",)))

    def lone_lora_a(f):
        t = peft_tensors(modules=("q_proj",))
        t.pop("base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight")
        write_peft(f, modules=("q_proj",), tensors=t)

    def extra_layer(f):
        write_peft(f, tensors={**peft_tensors(), **{k.replace("layers.1.", "layers.7."): v
                                                    for k, v in peft_tensors().items()}})

    def recorded_identity(f):
        write_peft(f, config={"base_model_identity": "llama-0000000000000000"})

    def named_other_base(f):
        other = write_base(os.path.join(tmp, "other-model"), hidden_size=256)
        write_peft(f, config={"base_model_name_or_path": other})

    def mixed_dtypes(f):
        t = peft_tensors()
        k = next(iter(t))
        t[k] = t[k].astype(np.float32)
        write_peft(f, tensors=t)

    def int_dtype(f):
        t = peft_tensors()
        k = next(iter(t))
        t[k] = t[k].astype(np.int32)
        write_peft(f, tensors=t)

    def not_lora_type(f):
        write_peft(f)
        _mutate_config(f, peft_type="PREFIX_TUNING")

    def no_targets(f):
        write_peft(f)
        _mutate_config(f, target_modules=[])

    def dora(f):
        write_peft(f, config={"use_dora": True})

    def extra_tensor(f):
        t = peft_tensors()
        t["base_model.model.lm_head.weight"] = np.ones((4, 4), np.float16)
        write_peft(f, tensors=t)

    def embedding_save(f):  # PEFT's default save when lm_head is targeted: the base layer's full weight too
        t = peft_tensors()
        t["base_model.model.lm_head.base_layer.weight"] = np.ones((4, 4), np.float16)
        write_peft(f, tensors=t)

    def modules_to_save(f):  # PEFT with modules_to_save=["embed_tokens"]: the trained copy of the whole layer
        t = peft_tensors()
        t["base_model.model.model.embed_tokens.modules_to_save.default.weight"] = np.ones((4, 4), np.float16)
        write_peft(f, tensors=t)

    return [
        ("rank0", rank(0), InvalidAdapter, "rank r must be a positive integer, got 0"),
        ("rank-neg", rank(-2), InvalidAdapter, "got -2"),
        ("rank-str", rank("4"), InvalidAdapter, "positive integer"),
        ("no-config", remove("adapter_config.json"), InvalidAdapter, "missing adapter_config.json"),
        ("no-weights", remove("adapter_model.safetensors"), InvalidAdapter, "missing adapter_model.safetensors"),
        ("pickle", bin_only, InvalidAdapter, "adapter_model.bin is a pickle file and is refused"),
        ("malformed-json", malformed_json, InvalidAdapter, "malformed JSON"),
        ("not-lora", not_lora_type, InvalidAdapter, "only LORA"),
        ("no-targets", no_targets, InvalidAdapter, "target_modules must be a non-empty list"),
        ("dora", dora, InvalidAdapter, "DoRA"),
        ("truncated", truncated, InvalidAdapter, "truncated"),
        ("corrupt-header", corrupt_header, InvalidAdapter, "corrupt safetensors header"),
        ("huge-header", huge_header_len, InvalidAdapter, "truncated or corrupt"),
        ("rank-shapes", wrong_rank_shapes, InvalidAdapter, "do not match rank r=4"),
        ("other-base", other_base_shapes, BaseModelMismatch, "do not match base model 'tiny'"),
        ("untargeted", untargeted_module, InvalidAdapter, "is not in target_modules"),
        ("missing-target", missing_target, InvalidAdapter, "have no lora_A/lora_B tensors"),
        ("lone-a", lone_lora_a, InvalidAdapter, "has lora_A but no lora_B"),
        ("extra-layer", extra_layer, BaseModelMismatch, "layer 7 does not exist"),
        ("identity", recorded_identity, BaseModelMismatch, "records base model identity"),
        ("named-base", named_other_base, BaseModelMismatch, "adapter was trained on"),
        ("mixed-dtypes", mixed_dtypes, InvalidAdapter, "mix dtypes"),
        ("int-dtype", int_dtype, InvalidAdapter, "must be F16, BF16 or F32"),
        ("extra-tensor", extra_tensor, InvalidAdapter, "unexpected tensor"),
        ("embedding-save", embedding_save, InvalidAdapter,
         "the full weight of lm_head, which PEFT saves beside the LoRA weights when lm_head is in modules_to_save"),
        ("modules-to-save", modules_to_save, InvalidAdapter, "save with save_embedding_layers=False"),
    ]


CASES = [c[0] for c in _bad_cases("/nonexistent", None)]


@pytest.mark.parametrize("case", CASES)
def test_bad_folder_is_refused_and_nothing_written(case, cat, tmp_path):
    name, make, err, words = next(c for c in _bad_cases(str(tmp_path), None) if c[0] == case)
    folder = str(tmp_path / "bad" / name)
    make(folder)
    before = written(cat)
    with pytest.raises(err) as info:
        cat.publish("acme/bad", folder)
    assert words in str(info.value), str(info.value)
    assert written(cat) == before == (0, 0, [])


@pytest.mark.parametrize("bad_id", ["", "../x", "/abs", "a\x00b", "\u0430pp", "x" * 129])
def test_bad_id_is_refused_before_reading(cat, peft, bad_id):
    with pytest.raises(InvalidAdapterId):
        cat.publish(bad_id, peft("a"))
    assert written(cat) == (0, 0, [])


def test_not_a_folder(cat, tmp_path):
    with pytest.raises(InvalidAdapter, match="is not a folder"):
        cat.publish("a", str(tmp_path / "nope"))


def test_modules_the_base_lacks_are_refused(cat, tmp_path):
    """An expert module on the dense tiny base has no widths to check: refused whatever its shape (SGLang would
    file it by name, unchecked); a known module's rank must still agree."""
    key = "base_model.model.model.layers.0.mlp.experts.3.w1"
    t = {f"{key}.lora_A.weight": np.ones((4, 77), np.float16), f"{key}.lora_B.weight": np.ones((199, 4), np.float16)}
    with pytest.raises(InvalidAdapter, match=f"{key}.lora_A.weight: the widths of w1 under experts are not recorded"):
        cat.publish("moe", write_peft(tmp_path / "moe", modules=("w1",), tensors=t))
    assert written(cat) == (0, 0, [])
    t = peft_tensors(modules=("q_proj",))
    t["base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight"] = np.ones((128, 5), np.float16)
    with pytest.raises(InvalidAdapter, match="do not match rank r=4"):
        cat.publish("q", write_peft(tmp_path / "q", modules=("q_proj",), tensors=t))


def test_rank_pattern_and_bf16(cat, tmp_path, base_dir):
    t = peft_tensors(rank=4)
    for k in list(t):
        if ".v_proj." in k:
            t[k] = np.ones((2, 128) if "lora_A" in k else (64, 2), np.float16)
    folder = write_peft(tmp_path / "rp", rank=4, config={"rank_pattern": {"v_proj": 2}}, tensors=t)
    assert cat.publish("rp", folder).rank == 4
    # BF16: numpy cannot hold it, so write the bytes by hand from an fp32 tensor's upper halves.
    f32 = {k: v.astype(np.float32) for k, v in peft_tensors(rank=2).items()}
    p = tmp_path / "bf16"
    write_peft(p, rank=2, tensors=f32)
    raw = open(p / "adapter_model.safetensors", "rb").read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    body = np.frombuffer(raw[8 + n:], np.uint32)
    for info in header.values():
        if isinstance(info, dict) and "dtype" in info:
            info["dtype"] = "BF16"
            info["data_offsets"] = [o // 2 for o in info["data_offsets"]]
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    open(p / "adapter_model.safetensors", "wb").write(struct.pack("<Q", len(hb)) + hb + (body >> 16).astype(np.uint16).tobytes())
    assert cat.publish("bf", str(p)).dtype == "bfloat16"
    assert read_peft_folder(str(p), cat.base).dtype == "bfloat16"


def test_bulk_import_with_progress_bar(cat, tmp_path, capsys):
    folders = [write_peft(tmp_path / "bulk" / f"ad{i}", seed=i, rank=1) for i in range(12)]
    revs = cat.import_folders(folders, namespace="team")
    assert [r.adapter_id for r in revs] == [f"team/ad{i}" for i in range(12)]
    err = capsys.readouterr().err
    assert "12/12" in err
    # a bad folder stops the import, names itself and says how many went in before it
    bad = write_peft(tmp_path / "bulk2" / "zz", rank=1)
    _mutate_config(bad, r=0)
    more = [write_peft(tmp_path / "bulk2" / f"b{i}", seed=100 + i, rank=1) for i in range(2)]
    with pytest.raises(InvalidAdapter, match=r"zz.*imported 2 of 3 folders"):
        cat.import_folders(more + [bad], progress=False)
    assert cat.stats()["adapters"] == 14
