"""The catalog is the authority for its ids, and SGLang's admin endpoints answer loopback only.

One real server on CPU (--enable-mint, a catalog, no --admin-api-key), called on
loopback with the official openai client and SGLang's native HTTP API. A caller
behind a proxy is played by a forwarding header: any such request is not loopback.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import openai
import pytest

from test_catalog_serving import complete

from sglang_mint.catalog import open_catalog
from sglang_mint.client import MintClient

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

TOL = 1e-4


@pytest.fixture(scope="module")
def folders(tiny_adapters):
    first, second = list(tiny_adapters.values())[:2]
    return {"catalog": first, "stock": second}


@pytest.fixture(scope="module")
def server(folders, shared_catalog, shared_catalog_server):
    with open_catalog(str(shared_catalog)) as cat:
        cat.publish("acme/bot", str(folders["catalog"]))
        cat.publish("ctl/same", str(folders["catalog"]))  # the same content under another id: the control
    return shared_catalog_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)


def call(server, path: str, body=None, headers: dict | None = None, method: str = "POST") -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(server.url + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=300) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def same_output(a, b) -> bool:
    return a[0] == b[0] and a[1] == pytest.approx(b[1], abs=TOL)


def test_a_stock_load_under_a_catalog_name_is_409_and_the_catalog_keeps_serving(server, client, folders):
    catalog = complete(client, "ctl/same")
    for path, body in (
        ("/load_lora_adapter", {"lora_name": "acme/bot", "lora_path": str(folders["stock"])}),
        ("/load_lora_adapter", {"lora_name": "acme/bot@7", "lora_path": str(folders["stock"])}),
        ("/load_lora_adapter_from_tensors", {"lora_name": "acme/bot", "config_dict": {},
                                             "serialized_named_tensors": []}),
        ("/unload_lora_adapter", {"lora_name": "acme/bot@1"}),
    ):
        code, text = call(server, path, body)
        assert code == 409, (path, body["lora_name"], code, text[:500])
        assert "'acme/bot'" in json.loads(text)["error_message"], text[:500]
    assert same_output(complete(client, "acme/bot"), catalog)
    assert same_output(complete(client, "tiny:acme/bot"), catalog)


def test_a_name_loaded_before_the_catalog_held_it_is_served_from_the_catalog_once_it_does(
        server, client, folders):
    code, text = call(server, "/load_lora_adapter", {"lora_name": "late/x", "lora_path": str(folders["stock"])})
    assert code == 200, text[:500]
    stock, catalog = complete(client, "late/x"), complete(client, "ctl/same")
    assert not same_output(stock, catalog)  # the two adapters' outputs differ, so the check below can fail
    MintClient(server.url).publish("late/x", str(folders["catalog"]))
    assert same_output(complete(client, "late/x"), catalog)
    code, text = call(server, "/generate", {"text": "the quick brown fox and the lazy dog", "lora_path": "late/x",
                                            "sampling_params": {"max_new_tokens": 6, "temperature": 0,
                                                                "ignore_eos": True}})
    assert code == 200 and json.loads(text)["output_ids"] == catalog[0], text[:500]


def test_sglang_admin_endpoints_refuse_forwarded_callers_and_answer_loopback(server, client):
    for path, body, method, header in (
        ("/flush_cache", None, "POST", {"X-Real-IP": "127.0.0.1"}),
        ("/load_lora_adapter", {"lora_name": "fwd/x", "lora_path": "/nonexistent"}, "POST",
         {"X-Forwarded-For": "127.0.0.1"}),
        ("/update_weights_from_disk", {"model_path": "/nonexistent"}, "POST", {"X-Forwarded-For": "127.0.0.1"}),
        ("/mint/status", None, "GET", {"Forwarded": "for=127.0.0.1"}),
    ):
        code, text = call(server, path, body, header, method)
        assert code == 403, (path, header, code, text[:500])
        error = json.loads(text)["error"]
        assert error["type"] == "permission_error" and "--admin-api-key" in error["message"], error
    assert call(server, "/flush_cache")[0] == 200
    code, text = call(server, "/mint/status", method="GET")
    assert code == 200 and "schedulers" in json.loads(text), text[:500]
    # inference is not an admin call: a forwarded caller is served
    proxied = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0,
                            default_headers={"X-Forwarded-For": "203.0.113.7"})
    assert proxied.completions.create(model="acme/bot", prompt="hello", max_tokens=1).choices


def test_v1_models_lists_stock_adapters_and_no_catalog_id_even_in_flight(server, client, folders):
    """A catalog revision is in SGLang's registry while a request uses it, and SGLang lists every registered
    name in /v1/models: any tenant polling it would learn the ids other tenants are calling."""
    code, text = call(server, "/load_lora_adapter", {"lora_name": "stock/listed", "lora_path": str(folders["stock"])})
    assert code == 200, text[:500]
    stream = client.completions.create(model="acme/bot", prompt="the quick brown fox", max_tokens=1500, stream=True,
                                       temperature=0, extra_body={"ignore_eos": True})
    try:
        next(stream)  # the request is in flight: its revision name is registered
        listed = [m.id for m in client.models.list().data]
        after = next(stream)
    finally:
        stream.close()
    assert after.choices[0].finish_reason is None  # still generating after the listing
    assert "tiny" in listed and "stock/listed" in listed, listed  # the base model and stock adapters, as stock
    assert not [name for name in listed if name.startswith("acme/")], listed
    assert call(server, "/unload_lora_adapter", {"lora_name": "stock/listed"})[0] == 200
