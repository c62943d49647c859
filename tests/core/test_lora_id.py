"""The LoRA id a catalog revision travels under carries its record across processes (lora_id.py)."""

from __future__ import annotations

import pickle

from sglang_mint.catalog.store import Revision
from sglang_mint.lora_id import CatalogLoraId, RevisionName, is_catalog_lora_id, lora_name_of, parse_lora_id


def revision() -> Revision:
    return Revision("acme/bot", 3, 1.5, "peft", 8, 16.0, "q_proj,v_proj", "float16", 1234,
                    '{"adapter_config.json": "ab"}', "cd" * 32, '{"k": 1}', 9999, 28, catalog=object())


def test_the_id_is_the_plain_string_and_pickles_with_its_record():
    lora_id = CatalogLoraId(revision())
    assert lora_id == "mint:acme/bot@3" and hash(lora_id) == hash("mint:acme/bot@3")
    assert {"mint:acme/bot@3": 1}[lora_id] == 1  # SGLang's dicts find it by the plain string
    back = pickle.loads(pickle.dumps(lora_id))  # as the tokenizer manager sends it to a scheduler
    assert type(back) is CatalogLoraId and back == lora_id
    rev = back.revision
    assert (rev.adapter_id, rev.revision, rev.content_digest, rev.size_bytes, rev.loaded_bytes, rev.tensor_count,
            rev.files, rev.metadata, rev.target_modules) == (
        "acme/bot", 3, "cd" * 32, 1234, 9999, 28, {"adapter_config.json": "ab"}, {"k": 1}, ("q_proj", "v_proj"))
    assert rev._catalog is None  # the catalog (its connections) stays behind


def test_revision_name_and_plain_strings_parse_alike():
    name = RevisionName(revision())
    assert name == "acme/bot@3" and pickle.loads(pickle.dumps(name)).revision == name.revision
    for lora_id in (CatalogLoraId(revision()), "mint:acme/bot@3"):
        assert is_catalog_lora_id(lora_id)
        assert parse_lora_id(lora_id) == ("acme/bot", 3) and lora_name_of(lora_id) == "acme/bot@3"
    assert not is_catalog_lora_id("0123456789abcdef0123456789abcdef") and not is_catalog_lora_id(None)
