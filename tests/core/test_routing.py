import pytest

from sglang_mint.errors import InvalidAdapterId
from sglang_mint.routing import adapter_from_model, answered_model


@pytest.mark.parametrize("model, expected", [
    ("tiny", None),
    ("tiny:a1", "a1"),
    ("a1", "a1"),
    ("acme/a1", "acme/a1"),
    ("tiny:acme/v2.1_x-y", "acme/v2.1_x-y"),
    ("tiny:", None),  # SGLang's rule: nothing after the colon is the base model
    ("tiny: a1 ", "a1"),  # SGLang strips the adapter part
])
def test_model_names(model, expected):
    assert adapter_from_model(model, "tiny") == expected


def test_served_name_with_colons():
    assert adapter_from_model("s3://bucket/m", "s3://bucket/m") is None
    assert adapter_from_model("s3://bucket/m:a1", "s3://bucket/m") == "a1"


@pytest.mark.parametrize("model", ["", "tiny:../x", "../x", "a" * 129, "a\x00b", "other:a1", "caf\u00e9", "/abs"])
def test_bad_models(model):
    with pytest.raises(InvalidAdapterId):
        adapter_from_model(model, "tiny")


@pytest.mark.parametrize("requested, lora_path, expected", [
    ("acme/a1", "acme/a1", "acme/a1"),  # the gateway rewrote {"model": "acme/a1"}
    ("tiny:acme/a1", "acme/a1", "tiny:acme/a1"),
    ("tiny: acme/a1", "acme/a1", "tiny: acme/a1"),
    (None, "acme/a1", "tiny"),  # {"model": "tiny", "lora_path": "acme/a1"} from the client itself
    ("acme/other", "acme/a1", "tiny"),  # the header names another adapter: not taken
    ("tiny", "acme/a1", "tiny"),
    ("../x", "../x", "tiny"),  # not an adapter id
    ("acme/a1", None, "tiny"),
    ("tiny:", None, "tiny:"),  # SGLang's other name for the base model, rewritten by the gateway
    ("acme/a1", ["acme/a1"], "tiny"),  # a batch's list of paths
])
def test_answered_model_is_what_the_client_sent_through_the_gateway(requested, lora_path, expected):
    assert answered_model("tiny", lora_path, requested, "tiny") == expected


def test_answered_model_keeps_a_model_that_names_an_adapter():
    assert answered_model("acme/a1", "acme/a1", "acme/b2", "tiny") == "acme/a1"


def test_a_long_model_is_not_echoed_whole():
    # "x" * 1,000,000 + ":a" was quoted twice in the 400's message, 2 MB of answer for a 1 MB field
    with pytest.raises(InvalidAdapterId) as exc:
        adapter_from_model("x" * 1_000_000 + ":a", "tiny")
    message = str(exc.value)
    assert "not the served model name 'tiny'" in message and "xxxxxxxx" in message and len(message) < 400


@pytest.mark.parametrize("model", ["acme/a1@2", "tiny:acme/a1@2"])
def test_a_revision_in_model_says_where_revisions_go(model):
    """``id@N`` pins a revision in ``lora_path``; in ``model`` it was refused as a bad character only."""
    with pytest.raises(InvalidAdapterId) as exc:
        adapter_from_model(model, "tiny")
    message = str(exc.value)
    assert "revision 2" in message and "lora_path" in message and "'acme/a1@2'" in message


@pytest.mark.parametrize("model", ["a" * 120 + "@" + "9" * 1_000_000, "a@\u00b2"])
def test_a_revision_hint_is_bounded_and_only_for_revisions_lora_path_takes(model):
    with pytest.raises(InvalidAdapterId) as exc:
        adapter_from_model(model, "tiny")
    assert len(str(exc.value)) < 600 and "lora_path" not in str(exc.value)
