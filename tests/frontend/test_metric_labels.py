"""The label values a request gives SGLang's HTTP metrics come from a fixed set (frontend/metric_labels.py).

Played at the ASGI level on a plain FastAPI app; the end-to-end check on a real server is
tests/sglang/test_catalog_observability.py.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI

from sglang_mint.frontend.metric_labels import (HTTP_METHODS, UNMATCHED_ENDPOINT, KnownMethodsOnly,
                                                check_custom_labels, endpoint_label)


def app_counting(seen: list[str]):
    app = FastAPI()

    @app.middleware("http")
    async def count(request, call_next):  # stands where SGLang's metrics middleware stands
        seen.append(request.method)
        return await call_next(request)

    @app.api_route("/v1/models", methods=sorted(HTTP_METHODS - {"CONNECT", "TRACE"}))
    async def models():
        return {"object": "list"}

    app.add_middleware(KnownMethodsOnly)  # added after, so outside, as the plugin adds it
    return app


def send(app, method: str, path: str) -> httpx.Response:
    async def call():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.request(method, path)

    return asyncio.run(call())


def test_a_method_http_does_not_define_is_refused_before_it_is_counted():
    seen: list[str] = []
    app = app_counting(seen)
    answer = send(app, "MINT7", "/v1/models")
    assert answer.status_code == 501
    error = answer.json()["error"]
    assert error["code"] == 501 and "'MINT7'" in error["message"] and "GET" in error["message"]
    assert seen == []


def test_the_methods_routes_take_pass_through():
    seen: list[str] = []
    app = app_counting(seen)
    for method in ("GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"):
        assert send(app, method, "/v1/models").status_code == 200, method
    assert seen == ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def test_a_method_is_named_in_the_refusal_cut_short():
    answer = send(app_counting([]), "X" * 5000, "/v1/models")
    assert answer.status_code == 501 and len(answer.json()["error"]["message"]) < 300


def test_an_unserved_path_is_labelled_unmatched_and_a_route_by_its_template():
    assert endpoint_label("/no-such-path-1", handled=False) == UNMATCHED_ENDPOINT
    assert endpoint_label("/v1/models/{model:path}", handled=True) == "/v1/models/{model:path}"


def test_custom_labels_may_name_only_the_allowed_labels():
    check_custom_labels({"tenant": "acme", "app": "bot"}, allowed=("app", "tenant"))
    check_custom_labels({}, allowed=())
    with pytest.raises(ValueError, match=r"custom_labels: 'model_name' is not a label .*one of app, tenant"):
        check_custom_labels({"tenant": "acme", "model_name": "spoofed"}, allowed=("app", "tenant"))
    with pytest.raises(ValueError, match="the server allows no custom label"):
        check_custom_labels({"tenant": "acme"}, allowed=())
    with pytest.raises(ValueError, match="not str"):
        check_custom_labels("tenant=acme", allowed=("tenant",))


def test_an_unallowed_label_name_is_cut_short_in_the_refusal():
    with pytest.raises(ValueError) as refused:
        check_custom_labels({"x" * 5000: "y"}, allowed=())
    assert len(str(refused.value)) < 300
