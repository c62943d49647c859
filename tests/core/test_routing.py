import pytest

from sglang_mint.errors import InvalidAdapterId
from sglang_mint.routing import adapter_from_model


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
