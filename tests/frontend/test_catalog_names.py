"""Which adapter a request names, with a catalog stand-in: no engine, no server.

The same rules run in a real server in tests/sglang/test_catalog_authority.py and
test_adapter_ids.py; here each decision is checked on its own.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import HTTPException

from sglang_mint.errors import AdapterNotFound
from sglang_mint.frontend.catalog_names import CatalogNames, lora_path_of_model


class Counter:
    def __init__(self):
        self.value = 0

    def inc(self):
        self.value += 1


class Catalog:
    """acme/bot at revisions 1..3, current 3; every other id unknown."""

    def resolve(self, adapter_id):
        if adapter_id != "acme/bot":
            raise AdapterNotFound(f"adapter {adapter_id!r} not found")
        return SimpleNamespace(adapter_id=adapter_id, revision=3, durable=True)

    def resolve_revision(self, adapter_id, revision):
        if adapter_id != "acme/bot" or revision > 3:
            raise AdapterNotFound(f"{adapter_id}@{revision} not found")
        return SimpleNamespace(adapter_id=adapter_id, revision=revision, durable=True)


@pytest.fixture
def names():
    return CatalogNames(Catalog(), SimpleNamespace(resolves=Counter(), not_found=Counter()))


def test_a_lora_path_list_becomes_revision_names_and_stock_names_stay(names):
    paths, found = names.resolve_lora_path(["acme/bot", None, "mine", "acme/bot@2"], stock={"mine"})
    assert paths == ["acme/bot@3", None, "mine", "acme/bot@2"] and found == ["acme/bot@3", "acme/bot@2"]
    assert found[0].revision.revision == 3  # the record rides with the name
    assert (names.resolves, names.metrics.resolves.value, names.metrics.not_found.value) == (2, 2, 0)
    single, found = names.resolve_lora_path("acme/bot", stock=())
    assert single == "acme/bot@3" and found == ["acme/bot@3"]


def test_an_unknown_or_malformed_entry_is_an_http_error_naming_it(names):
    with pytest.raises(HTTPException) as unknown:
        names.resolve_lora_path(["acme/bot", "acme/gone"], stock=())
    assert unknown.value.status_code == 404 and "lora_path: " in unknown.value.detail
    with pytest.raises(HTTPException) as malformed:
        names.resolve_lora_path("acme/bot@0", stock=())
    assert malformed.value.status_code == 400
    assert names.metrics.not_found.value == 2
    assert names.may_forget("mint:acme/bot@3", 0)  # the refused request left nothing arriving


def test_an_arriving_name_is_never_forgotten_until_settled(names):
    _, first = names.resolve_lora_path("acme/bot", stock=())
    _, second = names.resolve_lora_path("acme/bot", stock=())
    assert not names.may_forget("mint:acme/bot@3", 0)
    names.settle(first)
    assert not names.may_forget("mint:acme/bot@3", 0)  # the second request still arrives
    names.settle(second)
    assert names.may_forget("mint:acme/bot@3", 0) and not names.may_forget("mint:acme/bot@3", 1)


def test_stock_loads_and_unloads_under_catalog_names_are_refused(names):
    assert names.holder("acme/bot") == "acme/bot" and names.holder("other/x@9") == "other/x"
    assert names.holder("other/x") is None and names.holder(None) is None
    refused = names.load_refusal("acme/bot@7", reloading=False)
    assert refused.http_status == 409 and "revision name of catalog adapter 'acme/bot'" in str(refused)
    assert names.load_refusal("acme/bot", reloading=True) is None  # SGLang reloading what it loaded
    assert names.load_refusal("other/x", reloading=False) is None
    assert "roll back or delete" in str(names.unload_refusal("acme/bot", loaded=False))
    assert names.unload_refusal("acme/bot", loaded=True) is None


def test_the_model_field(names):
    assert lora_path_of_model("tiny", "tiny", "explicit", names, stock=()) == "explicit"
    assert lora_path_of_model("tiny:acme/bot", "tiny", None, names, stock=()) == "acme/bot@3"
    assert lora_path_of_model("mine", "tiny", None, names, stock={"mine"}) == "mine"
    assert lora_path_of_model("mine", "tiny", None, None, stock={"mine"}) == "mine"  # no catalog
    for model, status in (("acme/gone", 404), ("../x", 400)):
        with pytest.raises(HTTPException) as exc:
            lora_path_of_model(model, "tiny", None, names, stock=())
        assert exc.value.status_code == status
    with pytest.raises(HTTPException, match="404"):
        lora_path_of_model("acme/bot", "tiny", None, None, stock=())


class CountingCatalog(Catalog):
    """Catalog, counting its lookups."""

    def __init__(self):
        self.lookups = 0

    def resolve(self, adapter_id):
        self.lookups += 1
        return super().resolve(adapter_id)

    def resolve_revision(self, adapter_id, revision):
        self.lookups += 1
        return super().resolve_revision(adapter_id, revision)


def test_each_distinct_name_of_a_lora_path_list_is_looked_up_once():
    catalog = CountingCatalog()
    names = CatalogNames(catalog, SimpleNamespace(resolves=Counter(), not_found=Counter()))
    requested = ["acme/bot"] * 5000 + ["acme/bot@2", None, "mine", "acme/bot@2", "acme/bot"]
    paths, found = names.resolve_lora_path(requested, stock={"mine"})
    assert catalog.lookups == 3  # acme/bot, acme/bot@2, mine (not in the catalog, then stock)
    assert paths == ["acme/bot@3"] * 5000 + ["acme/bot@2", None, "mine", "acme/bot@2", "acme/bot@3"]
    assert found == ["acme/bot@3", "acme/bot@2"] and names.resolves == 2
    assert not names.may_forget("mint:acme/bot@3", 0) and not names.may_forget("mint:acme/bot@2", 0)
    names.settle(found)
    assert names.may_forget("mint:acme/bot@3", 0) and names.may_forget("mint:acme/bot@2", 0)


def test_a_lora_path_list_longer_than_the_batch_is_refused_before_any_lookup():
    catalog = CountingCatalog()
    names = CatalogNames(catalog, SimpleNamespace(resolves=Counter(), not_found=Counter()))
    with pytest.raises(HTTPException) as refused:
        names.resolve_lora_path(["acme/bot"] * 200000, stock=(), batch=1)
    assert refused.value.status_code == 400
    assert refused.value.detail.startswith("lora_path: ") and "200000" in refused.value.detail
    assert catalog.lookups == 0 and names.may_forget("mint:acme/bot@3", 0)
    with pytest.raises(HTTPException) as odd:  # JSON that is no name, unhashable included
        names.resolve_lora_path(["acme/bot", {"id": "acme/bot"}], stock=(), batch=2)
    assert odd.value.status_code == 400 and odd.value.detail.startswith("lora_path: ")
    paths, found = names.resolve_lora_path(["acme/bot", None, "acme/bot"], stock=(), batch=3)  # one per prompt
    assert paths == ["acme/bot@3", None, "acme/bot@3"] and found == ["acme/bot@3"]
    assert names.resolve_lora_path("acme/bot", stock=(), batch=1)[0] == "acme/bot@3"  # one name for the batch

