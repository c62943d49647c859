"""A packed header's part map comes from whoever uploaded the file: unpacking must cost at most the file.

Before these checks a 1.7 MiB upload whose part map listed 20,000 full-tensor parts cloned the stored
tensor 20,000 times (2.9 GB), and ``{"expert": "each", "experts": 10**15}`` looped for ever.
"""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import safetensors.torch
import torch

from hung import HUNG_AFTER_S
from packed_layouts import E, write_layout
from sglang_mint.packed import PACKED_FILE, PackedError
from sglang_mint.packed.convert import pack_folder, unpack_tensors
from sglang_mint.packed.format import decode_header, encode_header

PRE = "base_model.model.model.layers.0."
QKV_A = PRE + "self_attn.qkv_proj.lora_A.weight"  # [12, 32]: q rows 0:4, k absent (zeros), v rows 8:12
DOWN_A = PRE + "mlp.experts.down_proj.lora_A.weight"  # [E, 4, 24], one part with "expert": "each"


@pytest.fixture(scope="module")
def packed_bytes(tmp_path_factory):
    """A per-expert adapter packed by the converter: dense qkv_proj and 3D expert tensors."""
    tmp = tmp_path_factory.mktemp("part-map")
    pack_folder(str(write_layout(tmp / "src", "per_expert")), str(tmp / "p"))
    return (tmp / "p" / PACKED_FILE).read_bytes()


def with_part_map(data: bytes, edit) -> bytes:
    """The same file with ``edit(mint["tensors"])`` applied to its header's part map."""
    start, entries, mint = decode_header(data, len(data), "test")
    edit(mint["tensors"])
    return encode_header(entries, mint) + data[start:]


def unpack(data: bytes, **kw):
    _, _, mint = decode_header(data, len(data), "test")
    return unpack_tensors(mint, safetensors.torch.load(data), **kw)


def add_parts(name: str, *parts: dict):
    return lambda tmap: tmap[name]["parts"].extend(parts)


def full_box_copies(n: int):
    """``n`` parts with distinct names, each the whole of qkv_proj's A: n clones of it, unchecked."""
    return add_parts(QKV_A, *({"src": f"copy{k}", "expert": None, "box": [[0, 12], [0, 32]], "layout": "plain"}
                              for k in range(n)))


def test_many_full_box_parts_are_refused_before_anything_is_cloned(packed_bytes, monkeypatch):
    clones = []
    real_clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone", lambda self, *a, **k: clones.append(1) or real_clone(self, *a, **k))
    with pytest.raises(PackedError, match=rf"test: part map of {QKV_A}: .* parts"):
        unpack(with_part_map(packed_bytes, full_box_copies(200)), where="test")
    assert clones == []


def test_amplifying_upload_is_a_400_naming_the_tensor(packed_bytes, tmp_path):
    from sglang_mint.adapters.errors import InvalidAdapter
    from sglang_mint.catalog.upload import _unpack

    catalog = types.SimpleNamespace(base=types.SimpleNamespace(identity="unused", name="unused", num_experts=4))
    with pytest.raises(InvalidAdapter, match=rf"upload/{PACKED_FILE}: .*{QKV_A}") as err:
        _unpack(with_part_map(packed_bytes, full_box_copies(200)), catalog, f"upload/{PACKED_FILE}")
    assert err.value.http_status == 400


# The endless loop is told by Python steps, not seconds: the refusal takes about 130 trace events, the
# old loop over 10**15 experts passes a million in a second, however slowly the machine runs it.
MAX_STEPS = 1_000_000
ENDLESS = f"""
import sys, safetensors.torch
from sglang_mint.packed.convert import unpack_tensors
from sglang_mint.packed.format import PackedError, decode_header
data = open(sys.argv[1], "rb").read()
_, _, mint = decode_header(data, len(data), "test")
tensors = safetensors.torch.load(data)
steps = 0

def count(frame, event, arg):
    global steps
    steps += 1
    if steps > {MAX_STEPS}:
        raise RuntimeError("still unpacking after {MAX_STEPS:,} Python steps: a loop over the experts")
    return count

sys.settrace(count)
try:
    unpack_tensors(mint, tensors, where="test")
except PackedError as exc:
    print("refused:", exc)
"""


def test_each_part_with_10_15_experts_is_refused_not_looped(packed_bytes, tmp_path):
    """The reviewer's file: an "each" part naming 10**15 experts and a src already unpacked. In a child
    process that counts its Python steps, so that the old endless loop fails this test instead of hanging it."""
    seen = DOWN_A.replace("down_proj", "{e}.down_proj").replace("experts.{e}", "experts.0")
    path = tmp_path / PACKED_FILE
    path.write_bytes(with_part_map(packed_bytes, add_parts(
        DOWN_A, {"src": seen, "expert": "each", "experts": 10**15, "box": [[0, 1]], "layout": "plain"})))
    run = subprocess.run([sys.executable, "-c", ENDLESS, str(path)], capture_output=True, text=True,
                         timeout=HUNG_AFTER_S)
    assert run.returncode == 0, run.stderr
    assert f"refused: test: part map of {DOWN_A}: part 1 names 1000000000000000 experts" in run.stdout


def set_part(name: str, index: int, **fields):
    return lambda tmap: tmap[name]["parts"][index].update(fields)


def plain(src: str, box, expert=None) -> dict:
    return {"src": src, "expert": expert, "box": box, "layout": "plain"}


BAD_MAPS = {
    "same src and box twice": (lambda tmap: tmap[QKV_A]["parts"].append(dict(tmap[QKV_A]["parts"][0])),
                               rf"{QKV_A}: part 2 overlaps an earlier part"),
    "two sources in one region": (add_parts(QKV_A, plain("x", [[2, 6], [0, 32]])),
                                  rf"{QKV_A}: part 2 overlaps an earlier part"),
    "more parts than slices": (add_parts(QKV_A, plain("x", [[4, 6], [0, 32]]), plain("y", [[6, 8], [0, 32]])),
                               rf"{QKV_A}: 4 parts, but its 3 slices hold at most 3"),
    "box past the tensor's end": (set_part(QKV_A, 1, box=[[8, 13], [0, 32]]),
                                  rf"{QKV_A}: part 1 box \[\[8, 13\], \[0, 32\]\] is not inside shape \[12, 32\]"),
    "box with a negative start": (set_part(QKV_A, 1, box=[[-4, 12], [0, 32]]), rf"{QKV_A}: part 1 box .* not inside"),
    "box missing a dimension": (set_part(QKV_A, 1, box=[[8, 12]]), rf"{QKV_A}: part 1 box .* not inside"),
    "box of floats": (set_part(QKV_A, 1, box=[[8, 12.5], [0, 32]]), rf"{QKV_A}: part 1 box .* not inside"),
    "empty box": (set_part(QKV_A, 1, box=[[8, 8], [0, 32]]), rf"{QKV_A}: part 1 box .* not inside"),
    "expert past the stored experts": (
        lambda tmap: tmap[DOWN_A].update(parts=[plain("x", [[0, 4], [0, 24]], expert=E)]),
        rf"{DOWN_A}: part 0 indexes expert {E}, the tensor holds {E}"),
    "each with more experts than stored": (set_part(DOWN_A, 0, experts=E + 1),
                                           rf"{DOWN_A}: part 0 names {E + 1} experts, the tensor holds {E}"),
    "each without {e} in src": (set_part(DOWN_A, 0, src="one.name"), rf"{DOWN_A}: part 0 .* no {{e}}"),
    "per-expert and whole-tensor parts mixed": (add_parts(DOWN_A, plain("x", [[0, 1], [0, 1], [0, 1]])),
                                                rf"{DOWN_A}: part 1 .* mixes"),
    "src longer than any tensor name": (set_part(QKV_A, 1, src="x" * 5000),
                                        rf"{QKV_A}: part 1 src is 5000 characters"),
    "unknown layout": (set_part(QKV_A, 1, layout="spiral"), rf"{QKV_A}: part 1 layout 'spiral'"),
    "part is not an object": (add_parts(QKV_A, 5), rf"{QKV_A}: part 2 is not a JSON object"),
    "slices not 1 to 3": (lambda tmap: tmap[QKV_A].update(slices=10**6), rf"{QKV_A}: slices 1000000"),
    "tensor the file lacks": (lambda tmap: tmap.update({"nope.lora_A.weight": {"slices": 1, "parts": []}}),
                              r"part map names nope\.lora_A\.weight, a tensor the file does not store"),
}


@pytest.mark.parametrize("case", BAD_MAPS)
def test_bad_part_map_is_refused_naming_tensor_and_part(packed_bytes, case):
    edit, match = BAD_MAPS[case]
    with pytest.raises(PackedError, match=rf"^test: .*{match}"):
        unpack(with_part_map(packed_bytes, edit), where="test")


def test_expert_parts_are_bounded_by_the_base_models_experts(packed_bytes):
    with pytest.raises(PackedError, match=rf"test: part map of {DOWN_A}: part 0 names {E} experts, the base model has 2"):
        unpack(packed_bytes, where="test", max_experts=2)
    assert len(unpack(packed_bytes, where="test", max_experts=E)) == len(unpack(packed_bytes))


def test_one_element_sources_are_refused():
    """[64, 1, 1] unpacked expert by expert: 64 sources of one element, ~700 bytes of bookkeeping each."""
    tensors = {"t.lora_A.weight": torch.randn(64, 1, 1)}
    mint = {"tensors": {"t.lora_A.weight": {"slices": 1, "parts": [
        {"src": "x.{e}.lora_A.weight", "expert": "each", "experts": 64, "box": [[0, 1], [0, 1]], "layout": "plain"}]}}}
    with pytest.raises(PackedError, match=r"test: the part map makes 64 source tensors out of 64 stored elements"):
        unpack_tensors(mint, tensors, where="test")


def test_unpacked_sources_hold_no_more_bytes_than_the_data_region(packed_bytes):
    start, _, _ = decode_header(packed_bytes, len(packed_bytes), "test")
    out = unpack(packed_bytes)
    assert 0 < sum(t.nbytes for t in out.values()) <= len(packed_bytes) - start
