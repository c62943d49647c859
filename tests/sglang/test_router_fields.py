"""A router's fields (priority, DP ranks, PD hand-offs) are an admin's right with --enable-mint
(sglang/router_fields.py).

The hook's decisions on SGLang's own request objects and a real Starlette request; then a real
server without an admin key (``mint_server``): a tenant's priority, DP rank (in the body or
SGLang's X-Data-Parallel-Rank header) are refused, and /v1/responses is still served. /generate and /v1/completions bodies: the rows
``router-*`` of docs/bad-inputs.md (tests/sglang/test_bad_inputs.py). The admin key's side, on a server that has one:
tests/sglang/test_durable_later.py (test_a_router_s_fields_need_the_admin_key).
"""

from __future__ import annotations

from types import SimpleNamespace

import openai
import pytest
from starlette.requests import Request

from sglang_mint.sglang.router_fields import ROUTER_FIELDS, WRITTEN, _before_generate_request, refuse_router_fields

ADMIN_KEY = "ADMIN-KEY"


def tokenizer_manager(mint: bool = True, admin_api_key: str | None = ADMIN_KEY):
    args = SimpleNamespace(admin_api_key=admin_api_key, **({"_mint": object()} if mint else {}))
    return SimpleNamespace(server_args=args)


def http_request(bearer: str | None = None) -> Request:
    headers = [(b"authorization", f"Bearer {bearer}".encode())] if bearer else []
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers})


def generate(**fields):
    from sglang.srt.managers.io_struct import GenerateReqInput

    return GenerateReqInput(text="hi", **fields)


def written(obj) -> list[str]:
    return getattr(obj, WRITTEN, [])


VALUES = {"priority": 7, "routed_dp_rank": 1, "data_parallel_rank": 1, "disagg_prefill_dp_rank": 0,
          "bootstrap_host": "10.0.0.9", "bootstrap_port": 8998, "bootstrap_room": 42, "bootstrap_pair_key": "k"}


@pytest.mark.parametrize("field", ROUTER_FIELDS)
def test_a_tenant_s_router_field_is_refused_naming_it(field):
    obj = generate(**{field: VALUES[field]})
    _before_generate_request(tokenizer_manager(), obj, http_request("tenant-key"))
    assert written(obj) == [field]
    with pytest.raises(ValueError, match=rf"^{field}: a router's field.*--admin-api-key"):
        refuse_router_fields(obj)


@pytest.mark.parametrize("case, tm, request_of", [
    ("the admin key", tokenizer_manager(), lambda: http_request(ADMIN_KEY)),
    ("inside the process (sglang.Engine, the plugin's warm-ups)", tokenizer_manager(), lambda: None),
    ("without --enable-mint: SGLang's own behaviour", tokenizer_manager(mint=False), lambda: http_request()),
])
def test_who_may_write_a_router_s_fields(case, tm, request_of):
    obj = generate(**VALUES)
    _before_generate_request(tm, obj, request_of())
    assert written(obj) == [], case
    refuse_router_fields(obj)
    assert obj.priority == 7


def test_without_an_admin_key_no_http_caller_may_write_them():
    """A caller on loopback is no admin here: a proxy on the same machine relays tenants' requests."""
    obj = generate(priority=7)
    _before_generate_request(tokenizer_manager(admin_api_key=None), obj, http_request(""))
    assert written(obj) == ["priority"]
    obj = generate(priority=7)
    _before_generate_request(tokenizer_manager(), obj, http_request("not-the-key"))
    assert written(obj) == ["priority"]


def test_a_batch_without_router_fields_passes_after_sglang_normalizes_it():
    from sglang.srt.managers.io_struct import GenerateReqInput

    obj = GenerateReqInput(text=["a", "b"])
    _before_generate_request(tokenizer_manager(), obj, http_request("tenant-key"))
    obj.normalize_batch_and_arguments()  # bootstrap_* become [None, None]
    assert obj.bootstrap_host == [None, None] and written(obj) == []
    refuse_router_fields(obj)
    batch = GenerateReqInput(text=["a", "b"], bootstrap_room=[None, 5])
    _before_generate_request(tokenizer_manager(), batch, http_request("tenant-key"))
    assert written(batch) == ["bootstrap_room"]


# -- a real server without an admin key ------------------------------------------------------------------


@pytest.mark.server
@pytest.mark.parametrize("field, value", [("priority", 5), ("routed_dp_rank", 0)])
def test_a_tenant_s_router_field_is_refused_by_the_server(mint_client, field, value):
    with pytest.raises(openai.BadRequestError) as exc:
        mint_client.chat.completions.create(model="tiny-0000", max_tokens=2, extra_body={field: value},
                                            messages=[{"role": "user", "content": "hi"}])
    assert f"{field}: a router's field" in str(exc.value)


@pytest.mark.server
def test_sglang_s_dp_rank_header_is_refused_too(mint_client):
    with pytest.raises(openai.BadRequestError) as exc:
        mint_client.completions.create(model="tiny-0000", prompt="hi", max_tokens=2,
                                       extra_headers={"X-Data-Parallel-Rank": "0"})
    assert "routed_dp_rank: a router's field" in str(exc.value)
    assert mint_client.completions.create(model="tiny-0000", prompt="hi", max_tokens=2).choices[0].text is not None


@pytest.mark.server
def test_v1_responses_is_served(mint_client):
    """/v1/responses builds its request from ResponsesRequest, whose router fields default to None: not refused.
    (Its ``priority``, 0 by default, SGLang 0.5.23 never passes on.)"""
    answer = mint_client.responses.create(model="tiny", input="hi", max_output_tokens=2, store=False)
    assert answer.error is None and answer.status in ("completed", "incomplete"), answer  # (max_output_tokens)
