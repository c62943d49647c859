"""refuse_unallowed_custom_labels on SGLang's own request objects (sglang/metric_labels.py), no server.
A real server: tests/sglang/test_catalog_observability.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_mint.sglang.metric_labels import refuse_unallowed_custom_labels


def tokenizer_manager(metrics: bool = True, allowed=("tenant",)):
    return SimpleNamespace(enable_metrics=metrics,
                           server_args=SimpleNamespace(tokenizer_metrics_allowed_custom_labels=list(allowed)))


def test_a_generate_request_naming_an_unallowed_label_is_refused_and_an_allowed_one_passes():
    from sglang.srt.managers.io_struct import GenerateReqInput

    with pytest.raises(ValueError, match="custom_labels: 'app'"):
        refuse_unallowed_custom_labels(tokenizer_manager(), GenerateReqInput(text="hi", custom_labels={"app": "x"}))
    refuse_unallowed_custom_labels(tokenizer_manager(), GenerateReqInput(text="hi", custom_labels={"tenant": "a"}))
    refuse_unallowed_custom_labels(tokenizer_manager(metrics=False),  # SGLang reads them only with metrics on
                                   GenerateReqInput(text="hi", custom_labels={"app": "x"}))


def test_an_embedding_request_which_has_no_labels_passes():
    from sglang.srt.managers.io_struct import EmbeddingReqInput

    obj = EmbeddingReqInput(text="hi")
    assert not hasattr(obj, "custom_labels")  # an AttributeError here was a 500 for every embedding request
    refuse_unallowed_custom_labels(tokenizer_manager(), obj)
