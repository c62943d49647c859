"""Ids that open what SGLang keeps for a client are the server's own with --enable-mint
(sglang/server_made_ids.py): the hooks' decisions, on SGLang's own request objects. A real server:
tests/sglang/test_adapter_ids.py (test_a_stored_response_is_read_by_an_id_only_the_server_makes,
test_a_session_is_continued_by_an_id_only_the_server_makes)."""

import asyncio
from types import SimpleNamespace

import pytest

from sglang_mint.sglang.server_made_ids import STORED_RESPONSE_ID, _around_create_responses, _around_open_session

MINT_ON = SimpleNamespace(_mint=object())  # server_args with --enable-mint (flags.mint_config)


async def served(*args, **kwargs):
    return "served"


@pytest.mark.parametrize("mint, store_enabled, body, refused", [
    (True, True, {"request_id": "resp_job-1"}, True),
    (True, True, {"request_id": "resp_job-1", "store": False}, False),  # not stored: the client's id is kept
    (True, True, {}, False),  # the server makes the id
    (True, False, {"request_id": "resp_job-1"}, False),  # nothing is stored
    (False, True, {"request_id": "resp_job-1"}, False),  # without --enable-mint: SGLang's own behaviour
])
def test_a_stored_response_s_id_is_never_the_client_s(monkeypatch, mint, store_enabled, body, refused):
    from sglang.srt import runtime_context
    from sglang.srt.entrypoints.openai.protocol import ResponsesRequest

    monkeypatch.setattr(runtime_context, "get_serving", lambda: SimpleNamespace(enable_response_store=store_enabled))
    serving = SimpleNamespace(tokenizer_manager=SimpleNamespace(server_args=MINT_ON if mint else SimpleNamespace()),
                              create_error_response=lambda message, param: ("refused", message, param))
    answer = asyncio.run(_around_create_responses(served, serving, ResponsesRequest(input="hi", **body)))
    assert answer == (("refused", STORED_RESPONSE_ID, "request_id") if refused else "served")


@pytest.mark.parametrize("mint, body, refused", [
    (True, {"session_id": "chat-1"}, True),
    (True, {}, False),  # the server makes the id
    (False, {"session_id": "chat-1"}, False),  # without --enable-mint: SGLang's own behaviour
])
def test_a_session_s_id_is_never_the_client_s(mint, body, refused):
    from sglang.srt.managers.io_struct import OpenSessionReqInput

    tm = SimpleNamespace(server_args=MINT_ON if mint else SimpleNamespace())
    opened = _around_open_session(served, tm, OpenSessionReqInput(capacity_of_str_len=100, **body))
    if refused:
        with pytest.raises(ValueError, match="session_id: a session is continued and closed by its id alone"):
            asyncio.run(opened)
    else:
        assert asyncio.run(opened) == "served"
