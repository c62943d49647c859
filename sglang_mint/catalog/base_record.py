"""``mint catalog refresh-base``: record what an older version of mint left out of a catalog's base model.

``mint catalog init`` stores the base model's description (``BaseModel.to_json``) in the setting
``base_model``. Fields were added since (vocab_size and num_experts, then the widths of MoE experts,
shared experts, MLA and the DSA indexer, then ``moe_layers``, the layers that route to experts), and an
adapter module whose widths need a field the record lacks is refused (adapters/peft.py ``_widths``); a
record without ``moe_layers`` accepts an MLP LoRA on any layer, as before (module_paths.py
``absent_from_layer``). ``refresh_base`` reads the model's folder again and fills in what the record
lacks, e.g. for a Qwen3-MoE catalog made before the widths were recorded::

    {"name": "Qwen3-30B-A3B", "identity": "qwen3_moe-3f2a...", ..., "num_experts": 128}
    -> the same, plus "moe_intermediate_size": 768, "kv_lora_rank": null, ..., "moe_layers": [0, ..., 47]

Only the same model is accepted: its identity (a hash of the shape keys of config.json, unchanged
since the first version) must be the recorded one, and a number the record holds is never changed
(one that differs is refused, naming both); a field recorded as null is filled when the folder
has a number for it. The name stays the recorded one. The new record replaces
the old one in one UPDATE that also checks the old one is still there, so a reader sees one or the
other, and two refreshes cannot interleave. Servers read the record when they open the catalog:
those running keep the old one until they restart.
"""

from __future__ import annotations

import json

from sglang_mint.adapters.base_model import BaseModel, load_base_model
from sglang_mint.adapters.errors import BaseModelMismatch
from sglang_mint.catalog.errors import CatalogError


def refresh_base(cat, model_dir: str) -> dict:
    """Fill in the fields the base-model record of the open catalog ``cat`` lacks, from ``model_dir``.

    Returns ``{"base_model": the record now, "filled": {field: value written}}``; ``filled`` is
    empty, and nothing is written, when the record already had every field."""
    given = load_base_model(model_dir)
    raw = cat.store.get_setting("base_model")
    recorded = json.loads(raw)
    ours = BaseModel.from_json(recorded)
    if given.identity != ours.identity:
        raise BaseModelMismatch(f"--base-model {model_dir} is {given.name} ({given.identity}), not this catalog's "
                                f"base model {ours.name} ({ours.identity}): a catalog serves one base model, and "
                                "refresh-base only records what an older version of mint left out of its record")
    filled, differ = {}, []
    for key, value in given.to_json().items():
        if key == "name":
            continue  # for humans: the folder's name at init, kept
        if recorded.get(key) is None:
            if key not in recorded or value is not None:
                filled[key] = value
        elif recorded[key] != value:
            differ.append(f"{key} is {recorded[key]!r} in the record, {value!r} in {model_dir}")
    if differ:
        raise CatalogError(f"catalog {cat.display}: the base model record and {model_dir} ({given.identity}) "
                           f"disagree: {'; '.join(differ)}; nothing was written")
    record = {**recorded, **filled}
    if filled and not cat.store.replace_setting("base_model", raw, json.dumps(record)):
        raise CatalogError(f"catalog {cat.display}: its base model record changed while it was being refreshed; "
                           "nothing was written, run the command again")
    return {"base_model": record, "filled": filled}
