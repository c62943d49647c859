"""A client's rid may not be a proper prefix of the rids SGLang makes (sglang/frontend.py refuse_prefix_rids):
SGLang aborts every request whose rid starts with an aborted one's. A real server: tests/sglang/test_bad_inputs.py
(test_a_short_hex_rid_cannot_cancel_another_tenant_s_request)."""

import uuid

import pytest

from sglang_mint.sglang.frontend import refuse_prefix_rids


@pytest.mark.parametrize("rid", ["a", "0" * 31, "deadbeef", ["job-1", "a1"]])
def test_a_prefix_of_sglang_s_rids_is_refused(rid):
    with pytest.raises(ValueError, match="is a prefix of the request ids SGLang makes"):
        refuse_prefix_rids(rid)


@pytest.mark.parametrize("rid", [None, "", uuid.uuid4().hex, "0" * 32, "job-7-step-3", "A1", ["job-1", "job-2"]])
def test_any_other_rid_is_left_as_written(rid):
    refuse_prefix_rids(rid)  # no ValueError: no rid SGLang makes starts with it but itself
