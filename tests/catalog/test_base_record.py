"""A base-model record written by an older version of mint, and `mint catalog refresh-base`.

A catalog keeps the description of its base model that ``mint catalog init`` took (setting
``base_model``). Versions before the MoE and MLA widths were recorded wrote it without them, and
newer code refuses an adapter module whose widths it cannot check, so every expert adapter of such a
catalog was refused with nothing to fix it short of a new catalog. ``refresh-base`` fills in what the
record lacks from the same model's folder, in one write; another model is refused, naming both.
"""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from catalog_fixtures import write_peft, written

from sglang_mint.adapters.base_model import BaseModel, load_base_model
from sglang_mint.adapters.errors import InvalidAdapter
from sglang_mint.adapters.peft import check_tensors
from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.cli import main
from sglang_mint.dev.tiny_moe import write_tiny_moe, write_tiny_moe_adapters

# What each older version's record lacked: the first wrote none of the optional fields but mla; the
# second added vocab_size and num_experts; the MoE/MLA widths came after, then which layers route to experts.
WIDTHS = ("moe_intermediate_size", "shared_expert_intermediate_size", "q_lora_rank", "kv_lora_rank",
          "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "index_n_heads", "index_head_dim")
LAYERS = ("moe_layers",)
OLDER = {"first": WIDTHS + LAYERS + ("vocab_size", "num_experts"), "before-widths": WIDTHS + LAYERS}
EXPERT = "base_model.model.model.layers.0.mlp.experts.1.gate_proj"


@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """(tiny Qwen3-MoE folder, its per-expert adapter folder)."""
    root = tmp_path_factory.mktemp("qwen3-moe")
    model = write_tiny_moe(root / "model", "qwen3-moe", seed=0)
    return str(model), str(write_tiny_moe_adapters(model, root / "adapters", seed=0)["per-expert"])


def mint(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(["catalog", *args])
    return rc, out.getvalue(), err.getvalue()


def write_old_record(target: str, lacks: tuple[str, ...]) -> dict:
    """Rewrite the catalog's base_model setting as an older version wrote it: without ``lacks``."""
    with open_catalog(target) as cat:
        old = {k: v for k, v in json.loads(cat.store.get_setting("base_model")).items() if k not in lacks}
        with cat.store.write_lock() as c:
            cat.store.dialect.execute(c, "UPDATE settings SET value = ? WHERE key = 'base_model'", (json.dumps(old),))
    return old


@pytest.mark.parametrize("older", sorted(OLDER))
def test_an_old_record_refuses_an_expert_adapter_until_refresh_base(older, moe, catalog_target):
    model, adapter = moe
    target, blobs = catalog_target
    init_catalog(target, model, blobs=blobs).close()
    old = write_old_record(target, OLDER[older])
    with open_catalog(target) as cat:
        assert cat.base.moe_intermediate_size is None
        with pytest.raises(InvalidAdapter, match="mint catalog refresh-base CATALOG --base-model MODEL_DIR") as refused:
            cat.publish("acme/experts", adapter)
        assert "older version" in str(refused.value) and written(cat)[0] == 0

    rc, out, err = mint("refresh-base", target, "--base-model", model, "--json")
    assert rc == 0, err
    report = json.loads(out)
    assert report["filled"]["moe_intermediate_size"] == 32 and set(report["filled"]) == set(OLDER[older])
    with open_catalog(target) as cat:
        assert cat.base == load_base_model(model) and cat.base.unrecorded == ()
        assert cat.publish("acme/experts", adapter).revision == 1
        assert {k: v for k, v in json.loads(cat.store.get_setting("base_model")).items() if k in old} == old

    rc, out, _ = mint("refresh-base", target, "--base-model", model)  # nothing left to fill: no write
    assert rc == 0 and "already records" in out


def test_a_record_without_moe_layers_accepts_as_before_until_refresh_base(moe, catalog_target, tmp_path):
    """A dense MLP LoRA on a layer that routes to experts: accepted by a record that cannot tell (an older
    version's), refused once refresh-base has recorded the layers (test_moe_layers.py has the refusals)."""
    model, _ = moe
    target, blobs = catalog_target
    init_catalog(target, model, blobs=blobs).close()
    write_old_record(target, LAYERS)
    key = "base_model.model.model.layers.1.mlp.gate_proj"
    rng = np.random.default_rng(0)
    folder = write_peft(tmp_path / "dense-on-experts", modules=("gate_proj",), tensors={
        f"{key}.lora_A.weight": rng.standard_normal((4, 64)).astype(np.float16),
        f"{key}.lora_B.weight": rng.standard_normal((128, 4)).astype(np.float16)})
    with open_catalog(target) as cat:
        assert cat.base.unrecorded == LAYERS and cat.base.routes_to_experts(1) is None
        assert cat.publish("acme/old", folder).revision == 1

    rc, out, err = mint("refresh-base", target, "--base-model", model, "--json")
    assert rc == 0, err
    assert json.loads(out)["filled"] == {"moe_layers": [0, 1]}
    with open_catalog(target) as cat:
        assert cat.base == load_base_model(model) and cat.base.moe_layers == (0, 1)
        with pytest.raises(InvalidAdapter, match=f"{key}.lora_A.weight: layer 1 of base model 'model' routes to "
                                                 "experts and has no dense mlp.gate_proj"):
            cat.publish("acme/new", folder)


def test_refresh_base_refuses_another_model_naming_both(moe, catalog_target, base_dir):
    model, _ = moe
    target, blobs = catalog_target
    init_catalog(target, model, blobs=blobs).close()
    old = write_old_record(target, WIDTHS)
    ours, theirs = load_base_model(model), load_base_model(base_dir)
    rc, _, err = mint("refresh-base", target, "--base-model", base_dir)
    assert rc == 2 and ours.identity in err and theirs.identity in err and "a catalog serves one base model" in err
    with open_catalog(target) as cat:
        assert json.loads(cat.store.get_setting("base_model")) == old


def test_only_a_record_that_lacks_fields_points_to_refresh_base(base_dir):
    """A dense model's current record has the expert fields, null: its refusal says the model has no such module."""
    header = {f"{EXPERT}.lora_A.weight": ("F16", [4, 128]), f"{EXPERT}.lora_B.weight": ("F16", [256, 4])}
    config = {"peft_type": "LORA", "r": 4, "target_modules": ["gate_proj"]}
    current = load_base_model(base_dir)
    old = BaseModel.from_json({k: v for k, v in current.to_json().items() if k not in WIDTHS})
    assert old.unrecorded == tuple(sorted(WIDTHS)) and "unrecorded" not in old.to_json()
    with pytest.raises(InvalidAdapter, match="older version") as refused:
        check_tensors(header, config, old, "ad")
    assert "mint catalog refresh-base CATALOG --base-model MODEL_DIR" in str(refused.value)
    with pytest.raises(InvalidAdapter, match="which has no such module") as refused:
        check_tensors(header, config, current, "ad")
    assert "refresh-base" not in str(refused.value)
    # a record written before moe_layers (every catalog made before it) has every width: the module is absent
    before_moe_layers = BaseModel.from_json({k: v for k, v in current.to_json().items() if k != "moe_layers"})
    assert before_moe_layers.unrecorded == ("moe_layers",)
    with pytest.raises(InvalidAdapter, match="which has no such module") as refused:
        check_tensors(header, config, before_moe_layers, "ad")
    assert "refresh-base" not in str(refused.value)
