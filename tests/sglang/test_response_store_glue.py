"""The glue's continuation read (sglang/response_store.py): an answer kept without its conversation is a 400
to continue, not SGLang's KeyError (a 500). End to end: test_stored_responses.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sglang_mint.frontend.response_store import limited_stores
from sglang_mint.sglang.response_store import _around_response_input_history


class Request:
    def __init__(self, previous_response_id: str | None):
        self.previous_response_id = previous_response_id


def test_continuing_an_answer_whose_conversation_is_not_kept_is_a_clear_value_error():
    stores = limited_stores(10, 1 << 20)
    serving = SimpleNamespace(msg_store=stores.conversations)
    stores.answers["resp_bg"] = SimpleNamespace(status="queued")  # being made: no conversation yet

    def sglang_reads(serving, request):  # OpenAIServingResponses._response_input_history
        return list(serving.msg_store[request.previous_response_id])

    with pytest.raises(ValueError, match="'resp_bg': that answer cannot be continued yet"):
        _around_response_input_history(sglang_reads, serving, Request("resp_bg"))
    stores.conversations["resp_a"] = [{"role": "user", "content": "hi"}]
    assert _around_response_input_history(sglang_reads, serving, Request("resp_a")) == [{"role": "user",
                                                                                         "content": "hi"}]
    assert _around_response_input_history(lambda s, r: ["own"], serving, Request(None)) == ["own"]
