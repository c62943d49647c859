"""An adapter folder holds one form: PEFT (adapter_config.json + adapter_model.safetensors) or packed
(adapter.mintpack). A folder holding both is refused by the catalog's publish, the trainer client and
`mint pack`, alike: either file may be the stale one (a retrain over a packed folder, `mint pack SRC SRC`),
and before they refused it the catalog published the safetensors while the client uploaded the pack.
SGLang's load of such a folder is refused too (tests/sglang/test_packed_e2e.py)."""

import contextlib
import io
import os
import shutil

import pytest
from catalog_fixtures import write_base, write_peft, written

from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.catalog import init_catalog
from sglang_mint.cli import main
from sglang_mint.client import adapter_files
from sglang_mint.errors import MintError
from sglang_mint.packed import PACKED_FILE
from sglang_mint.packed.convert import pack_folder

WEIGHTS = "adapter_model.safetensors"


def _retrained_over_a_packed_folder(tmp_path, weights_name=WEIGHTS):
    """A packed folder of one adapter, with another training run's weights copied in beside it."""
    folder = tmp_path / "both"
    pack_folder(write_peft(tmp_path / "run1", seed=1), str(folder))
    shutil.copy(os.path.join(write_peft(tmp_path / "run2", seed=2), WEIGHTS), folder / weights_name)
    return folder


@pytest.fixture
def cat(tmp_path):
    with init_catalog(str(tmp_path / "cat"), write_base(tmp_path / "tiny")) as c:
        yield c


@pytest.mark.parametrize("weights_name", [WEIGHTS, "adapter_model.bin"])
@pytest.mark.parametrize("pack", [False, True])
def test_catalog_publish_refuses_both_forms_and_writes_nothing(cat, tmp_path, weights_name, pack):
    folder = _retrained_over_a_packed_folder(tmp_path, weights_name)
    with pytest.raises(InvalidAdapter, match=f"holds both {PACKED_FILE} and {weights_name}.*remove the stale one"):
        cat.publish("acme/bot", str(folder), pack=pack)
    assert written(cat) == (0, 0, [])
    os.remove(folder / weights_name)  # the packed folder alone publishes packed
    assert cat.publish("acme/bot", str(folder)).format == "packed"


def test_the_client_refuses_both_forms(tmp_path):
    folder = _retrained_over_a_packed_folder(tmp_path)
    with pytest.raises(MintError, match=f"holds both {PACKED_FILE} and {WEIGHTS}"):
        adapter_files(str(folder))
    os.remove(folder / PACKED_FILE)  # the PEFT folder alone uploads as PEFT
    assert sorted(adapter_files(str(folder))) == ["adapter_config.json", WEIGHTS]


def test_mint_pack_never_writes_beside_peft_weights(tmp_path, capsys):
    src = write_peft(tmp_path / "src", seed=3)
    before = sorted(os.listdir(src))
    assert main(["pack", src, src]) == 2
    assert f"{src} holds {WEIGHTS}: `mint pack` writes a packed folder of its own" in capsys.readouterr().err
    assert sorted(os.listdir(src)) == before
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["pack", src, str(tmp_path / "packed")]) == 0
        assert main(["pack", "--unpack", str(tmp_path / "packed"), str(tmp_path / "packed")]) == 2
    assert f"holds {PACKED_FILE}: `mint pack --unpack` writes a PEFT folder of its own" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "packed")) == ["adapter.mintpack", "adapter_config.json"]


# What transformers' Trainer writes into a checkpoint folder beside the adapter: SGLang's loader never
# reads the first five as weights (weight_utils.filter_files_not_needed_for_inference), nor the others.
TRAINER_FILES = ("training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt", "optimizer.bin",
                 "rng_state.pth", "trainer_state.json", "tokenizer.json", "README.md")


def test_a_packed_checkpoint_folder_with_the_trainer_s_files_is_one_form(cat, tmp_path, capsys):
    """A checkpoint folder packed in place by an older mint, whose stale adapter_model.safetensors was
    removed as the refusal says: what is left is one adapter, the pack. The trainer's own files (optimizer
    state, training_args.bin) are no weights SGLang would read, and refusing them named them as an adapter."""
    folder = _retrained_over_a_packed_folder(tmp_path)
    for name in TRAINER_FILES:
        (folder / name).write_bytes(b"\x80\x04N.")  # a pickle's bytes: never read
    with pytest.raises(InvalidAdapter, match=f"holds both {PACKED_FILE} and {WEIGHTS}, and nothing"):
        cat.publish("acme/bot", str(folder))
    os.remove(folder / WEIGHTS)  # the stale one, as the refusal says
    assert sorted(adapter_files(str(folder))) == [PACKED_FILE]
    assert cat.publish("acme/bot", str(folder)).format == "packed"
    with contextlib.redirect_stdout(io.StringIO()):  # and `mint pack` may write into such a folder
        assert main(["pack", write_peft(tmp_path / "run3", seed=3), str(folder)]) == 0, capsys.readouterr().err
