"""A router's fields (priority, the DP rank) are an admin's right with --enable-mint
(sglang/router_fields.py), and the admin key opens the tenants' routes (sglang/admin.py).

The hooks' decisions on SGLang's own request objects, a real Starlette request and SGLang's own
auth decision; then a real server with a tenants' key, an admin key and priority scheduling: a
tenant's priority is refused, an admin's is served. The DP rank on a server with two DP ranks:
tests/sglang/test_parallel.py (test_dp2_a_tenant_cannot_pin_a_rank).
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import openai
import pytest
from json_calls import post_json
from starlette.requests import Request

from sglang_mint.dev.server import SGLangServer
from sglang_mint.sglang import admin
from sglang_mint.sglang.router_fields import ROUTER_FIELDS, WRITTEN, _before_generate_request, refuse_router_fields

TENANT_KEY, ADMIN_KEY = "TENANT-KEY", "ADMIN-KEY"
VALUES = {"priority": 7, "routed_dp_rank": 1, "data_parallel_rank": 1}


def tokenizer_manager(mint: bool = True, admin_api_key: str | None = ADMIN_KEY, priority_scheduling: bool = True,
                      dp_size: int = 2):
    args = SimpleNamespace(admin_api_key=admin_api_key, dp_size=dp_size, **({"_mint": object()} if mint else {}))
    return SimpleNamespace(server_args=args, enable_priority_scheduling=priority_scheduling)


def http_request(bearer: str | None = None) -> Request:
    headers = [(b"authorization", f"Bearer {bearer}".encode())] if bearer else []
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": headers})


def generate(**fields):
    from sglang.srt.managers.io_struct import GenerateReqInput

    return GenerateReqInput(text="hi", **fields)


def written(obj) -> list[str]:
    return getattr(obj, WRITTEN, [])


@pytest.mark.parametrize("field", ROUTER_FIELDS)
def test_a_tenant_s_router_field_is_refused_naming_it(field):
    obj = generate(**{field: VALUES[field]})
    _before_generate_request(tokenizer_manager(), obj, http_request(TENANT_KEY))
    assert written(obj) == [field]
    with pytest.raises(ValueError, match=rf"^{field}: a router's field.*--admin-api-key"):
        refuse_router_fields(obj)


@pytest.mark.parametrize("case, tm, request_of", [
    ("the admin key", tokenizer_manager(), lambda: http_request(ADMIN_KEY)),
    ("inside the process (sglang.Engine, the plugin's warm-ups)", tokenizer_manager(), lambda: None),
    ("without --enable-mint: SGLang's own behaviour", tokenizer_manager(mint=False), lambda: http_request()),
    ("where SGLang ignores them: no priority scheduling, one DP rank",
     tokenizer_manager(priority_scheduling=False, dp_size=1), lambda: http_request(TENANT_KEY)),
])
def test_who_may_write_a_router_s_fields(case, tm, request_of):
    obj = generate(**VALUES)
    _before_generate_request(tm, obj, request_of())
    assert written(obj) == [], case
    refuse_router_fields(obj)
    assert obj.priority == 7


def test_without_an_admin_key_no_http_caller_may_write_them():
    """A caller on loopback is no admin here: a proxy on the same machine relays tenants' requests."""
    for tm, bearer in [(tokenizer_manager(admin_api_key=None), None), (tokenizer_manager(), "not-the-key")]:
        obj = generate(priority=7)
        _before_generate_request(tm, obj, http_request(bearer))
        assert written(obj) == ["priority"]


@pytest.mark.parametrize("level, header, mint, allowed", [
    ("NORMAL", f"Bearer {ADMIN_KEY}", True, True),  # the admin key opens the tenants' routes
    ("NORMAL", f"bearer {ADMIN_KEY}", True, True),  # the scheme in any case, as SGLang reads it
    ("NORMAL", f"Bearer {ADMIN_KEY}", False, False),  # without --enable-mint: SGLang's own decision
    ("NORMAL", "Bearer wrong", True, False),
    ("NORMAL", None, True, False),
    ("NORMAL", f"Bearer {TENANT_KEY}", True, True),  # SGLang's own: the tenants' key
    ("ADMIN_OPTIONAL", f"Bearer {TENANT_KEY}", True, False),  # admin routes: only the admin key, as before
])
def test_the_admin_key_opens_the_tenants_routes(monkeypatch, level, header, mint, allowed):
    from sglang.srt.utils.auth import AuthLevel, decide_request_auth

    monkeypatch.setattr(admin.admin_guard, "is_guarded", lambda app: mint)
    kwargs = dict(method="POST", path="/v1/chat/completions", authorization_header=header, api_key=TENANT_KEY,
                  admin_api_key=ADMIN_KEY, auth_level=getattr(AuthLevel, level))
    decision = admin._after_decide_request_auth(decide_request_auth(**kwargs), **kwargs)
    assert decision.allowed is allowed


# -- a real server with a tenants' key, an admin key and priority scheduling ----------------------------------


@pytest.fixture(scope="module")
def keyed_server(tiny_model, tiny_adapters, tmp_path_factory):
    log = tmp_path_factory.mktemp("keyed-server") / "server.log"
    with SGLangServer(tiny_model, lora_paths=tiny_adapters, log_path=log, python=sys.executable,
                      extra_args=["--api-key", TENANT_KEY, "--admin-api-key", ADMIN_KEY,
                                  "--enable-priority-scheduling"]) as server:
        yield server


def chat(server, key: str, **extra):
    client = openai.OpenAI(base_url=server.openai_url, api_key=key, max_retries=0, timeout=120)
    return client.chat.completions.create(model="tiny-0000", max_tokens=2, temperature=0, extra_body=extra or None,
                                          messages=[{"role": "user", "content": "hi"}])


@pytest.mark.server
def test_a_tenant_s_priority_is_refused_and_an_admin_s_served(keyed_server):
    assert chat(keyed_server, TENANT_KEY).choices[0].finish_reason == "length"
    with pytest.raises(openai.BadRequestError) as exc:
        chat(keyed_server, TENANT_KEY, priority=5)
    assert "priority: a router's field" in str(exc.value) and "--admin-api-key" in str(exc.value)
    # SGLang admits only the tenants' key to this route; with --enable-mint the admin's key too
    assert chat(keyed_server, ADMIN_KEY, priority=5).choices[0].finish_reason == "length"
    with pytest.raises(openai.AuthenticationError):
        chat(keyed_server, "wrong", priority=5)


@pytest.mark.server
def test_native_generate_refuses_a_tenant_s_priority_too(keyed_server):
    def generate_with(key: str) -> tuple[int, str]:
        return post_json(keyed_server, "/generate", {"text": "hi", "priority": 3, "sampling_params": {
            "max_new_tokens": 2}}, headers={"Authorization": f"Bearer {key}"})

    status, body = generate_with(TENANT_KEY)
    assert status == 400 and "priority: a router's field" in body, (status, body)
    status, body = generate_with(ADMIN_KEY)
    assert status == 200, body
