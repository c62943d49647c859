"""The gateway middleware's Python (gateway/adapter_route/guest.py) on request bodies a tenant wrote.

The guest runs inside SMG as a WebAssembly component; here its module runs in this process, with
stand-ins for the bindings componentize-py generates (``wit_world``) and for the ``route_config``
a build bakes in. An exception out of ``on_request`` is a trap in SMG, not the engine's clear
answer: every body must come out as Continue or Modify. tests/sglang/test_gateway.py runs the
real component behind a real SMG.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from types import ModuleType, SimpleNamespace

import pytest

from sglang_mint.gateway.middleware import GUEST_DIR, REQUESTED_MODEL_HEADER, ROUTED_PATHS


@dataclass
class Header:
    name: str
    value: str


@dataclass
class ModifyAction:
    status: object
    headers_set: list
    headers_add: list
    headers_remove: list
    body_replace: bytes | None


@dataclass
class Action_Modify:
    value: ModifyAction


class Action_Continue:
    pass


@pytest.fixture
def guest(monkeypatch):
    types = ModuleType("wit_world.imports.middleware_types")
    types.Action_Continue, types.Action_Modify, types.Header, types.ModifyAction = (
        Action_Continue, Action_Modify, Header, ModifyAction)
    world = ModuleType("wit_world")
    world.exports = SimpleNamespace(MiddlewareOnRequest=object, MiddlewareOnResponse=object)
    config = ModuleType("route_config")
    config.BASE_MODEL, config.ROUTED_PATHS, config.REQUESTED_MODEL_HEADER = "tiny", ROUTED_PATHS, REQUESTED_MODEL_HEADER
    config.ROUTING_KEYS = {}
    for name, module in (("wit_world", world), ("wit_world.imports", ModuleType("wit_world.imports")),
                         ("wit_world.imports.middleware_types", types), ("route_config", config)):
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location("mint_adapter_route_guest", GUEST_DIR / "guest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.MiddlewareOnRequest()


def request(body: bytes):
    return SimpleNamespace(method="POST", path="/v1/completions", headers=[], body=body)


def test_a_good_body_is_rewritten_with_its_routing_key(guest):
    action = guest.on_request(request(b'{"model": "acme/bot", "prompt": "hi"}'))
    assert isinstance(action, Action_Modify)
    assert Header("x-smg-routing-key", "acme/bot") in action.value.headers_set


@pytest.mark.parametrize("body", [
    b"[" * 40000,  # json.loads: RecursionError, no ValueError
    b'{"model": "tiny", "prompt": ' + b"[" * 40000 + b"}",
    b"\xff\xfe",
])
def test_a_body_json_cannot_read_is_left_to_smg(guest, body):
    assert isinstance(guest.on_request(request(body)), Action_Continue)


@pytest.mark.parametrize("model", ["\\ud800", "acme/\\udfff", "tiny:\\ud800x"])
def test_a_model_holding_a_lone_surrogate_gets_no_routing_key(guest, model):
    # A WIT string holds text only: key.encode() raised UnicodeEncodeError. The rewritten body still
    # carries the id, which the engine refuses with its own 400.
    action = guest.on_request(request(b'{"model": "' + model.encode() + b'"}'))
    assert isinstance(action, Action_Modify)
    assert action.value.headers_set == []
    assert b'"lora_path": "' in action.value.body_replace


def test_anything_else_that_raises_leaves_the_request_to_smg(guest):
    # The rewritten body of a deep but parseable request: json.dumps may run out of the WebAssembly
    # build's smaller stack where json.loads did not. Played here by headers SMG would never send.
    odd = SimpleNamespace(method="POST", path="/v1/completions", headers=None, body=b'{"model": "acme/bot"}')
    assert isinstance(guest.on_request(odd), Action_Continue)
