"""SMG request middleware that lets clients keep ``model=<adapter-id>`` through the gateway.

This file runs inside SMG, compiled to a WebAssembly component by componentize-py
(``middleware.py`` builds it); it imports nothing from sglang-mint. SMG routes a
request by its ``model`` field and answers 404 ``model_not_found`` for a name that
is not a registered worker model, such as an adapter id. So, with base ``tiny``:

    {"model": "acme/bot", ...}        -> {"model": "tiny", "lora_path": "acme/bot", ...}
    {"model": "tiny:acme/bot", ...}      + header X-SMG-Routing-Key: acme/bot
    {"model": "tiny", "lora_path": "acme/bot"}  -> body unchanged, + X-SMG-Routing-Key: acme/bot
    {"model": "tiny"}  or no JSON     -> unchanged

When it rewrites ``model``, the client's own goes on to the engine in the header
REQUESTED_MODEL_HEADER (``x-request-id-mint-model: acme/bot``), so that the answer names it.

SMG's ``consistent_hashing`` policy then hashes the routing key onto its ring of
engines: every request for ``acme/bot`` goes to the same engine while it is healthy.
The key is the adapter id, or its entry in ROUTING_KEYS (``acme/tutor#2``) when a
placement moved it to another engine (placement.py).
The engine resolves ``lora_path`` through its catalog, and an id it does not know
gets the engine's own 400/404, naming it. A client's own X-SMG-Routing-Key is kept.
"""

import json

from wit_world import exports
from wit_world.imports.middleware_types import Action_Continue, Action_Modify, Header, ModifyAction

from route_config import BASE_MODEL, REQUESTED_MODEL_HEADER, ROUTED_PATHS, ROUTING_KEYS

ROUTING_KEY = "x-smg-routing-key"
MAX_KEY_BYTES = 128  # SMG ignores a longer routing key
MAX_MODEL_HEADER = 512  # a longer model is no adapter id: the engine refuses it anyway


def adapter_of(body):
    """The adapter a request body names, or None; rewrites ``body`` to SMG's form in place."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return None
    if model == BASE_MODEL:
        lora = body.get("lora_path")
        return lora if isinstance(lora, str) and lora else None
    prefix = BASE_MODEL + ":"
    adapter = model[len(prefix):].strip() if model.startswith(prefix) else model
    if not adapter:
        body["model"] = BASE_MODEL
        return None
    body["model"] = BASE_MODEL
    body["lora_path"] = adapter
    return adapter


def _utf8_size(text):
    """Bytes of ``text`` in UTF-8; 0 for a string holding a lone surrogate ("\\ud800" in the JSON), which
    no WIT string can carry: an exception here would be a trap in SMG, not the engine's 400."""
    try:
        return len(text.encode())
    except UnicodeEncodeError:
        return 0


class MiddlewareOnRequest(exports.MiddlewareOnRequest):
    def on_request(self, req):
        try:
            return self._routed(req)
        except Exception:  # noqa: BLE001 - a trap here fails the call in SMG; the engine answers the body itself
            return Action_Continue()

    def _routed(self, req):
        if req.method != "POST" or req.path not in ROUTED_PATHS:
            return Action_Continue()
        try:
            body = json.loads(req.body)
        except (ValueError, RecursionError):  # RecursionError: "[" * 40000, nested past the recursion limit
            return Action_Continue()  # SMG answers the malformed body itself
        if not isinstance(body, dict):
            return Action_Continue()
        before = body.get("model")
        adapter = adapter_of(body)
        has_key = any(h.name.lower() == ROUTING_KEY for h in req.headers)
        headers = []
        key = ROUTING_KEYS.get(adapter, adapter) if adapter is not None else None
        if key is not None and not has_key and 0 < _utf8_size(key) <= MAX_KEY_BYTES:
            headers.append(Header(ROUTING_KEY, key))
        rewritten = body.get("model") != before
        if rewritten and before.isascii() and before.isprintable() and len(before) <= MAX_MODEL_HEADER:
            headers.append(Header(REQUESTED_MODEL_HEADER, before))
        if not rewritten and not headers:
            return Action_Continue()
        new_body = json.dumps(body).encode() if rewritten else None
        return Action_Modify(ModifyAction(None, headers, [], [], new_body))


class MiddlewareOnResponse(exports.MiddlewareOnResponse):
    def on_response(self, resp):
        return Action_Continue()
