"""The ``/mint/*`` endpoints on SGLang's app (the handlers are ``frontend/mint_api.py``), and
``--mint-gateway``'s watcher (``gateway/registration.py``), started as the server starts.

Added before the server starts, with SGLang's ``AuthLevel.ADMIN_OPTIONAL`` mark, the
admin guard (``admin.py``), the key check of WebSocket handshakes (``frontend/websocket_keys.py``),
the refusal of methods HTTP does not define (``metric_labels.py``)
and the 409 answer to a stock load or unload under a catalog name; the handlers read SGLang's
tokenizer manager as a ``MintEngine``.
The server also keeps idle connections open longer than its clients' pools do.
"""

from __future__ import annotations

import logging
import os

from sglang.srt.utils.auth import AuthLevel, auth_level

from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.body_limit import BodyLimit
from sglang_mint.frontend.catalog_names import CatalogNameTaken, catalog_name_taken
from sglang_mint.frontend.mint_api import add_routes
from sglang_mint.frontend.websocket_keys import WebSocketKeys, handshake_keys
from sglang_mint.sglang import admin, metric_labels
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.frontend import catalog_frontend
from sglang_mint.sglang.hooks import verify_internals

logger = logging.getLogger("sglang_mint")

# SGLang's uvicorn closes a connection idle for SGLANG_TIMEOUT_KEEP_ALIVE seconds (5 by default),
# the very age at which the openai client's pool (httpx: 5 s) stops reusing one: a request sent
# on it as the server closes it fails with "Server disconnected without sending a response".
# A server that waits longer than every common client pool (httpx 5 s, aiohttp 15 s, Go's and
# reqwest's 90 s) never closes a connection a client is about to use; an idle socket costs
# the server next to nothing. An operator's own SGLANG_TIMEOUT_KEEP_ALIVE is kept.
IDLE_CONNECTION_S = 120


class TokenizerManagerEngine:
    """mint_api.MintEngine, read off SGLang's tokenizer manager and its app."""

    def __init__(self, tm, app):
        self.tm, self.app = tm, app

    @property
    def names(self):
        return catalog_frontend(self.tm)

    @property
    def config(self):
        return mint_config(self.tm.server_args)

    @property
    def max_lora_rank(self):
        return self.tm.server_args.max_lora_rank

    @property
    def registered_names(self) -> int:
        return self.tm.lora_registry.num_registered_loras

    @property
    def stored_responses(self) -> dict | None:
        serving = getattr(self.app.state, "openai_serving_responses", None)
        stores = getattr(getattr(serving, "response_store", None), "bounds", None)  # limited_stores' (response_store.py)
        from sglang.srt.runtime_context import get_serving

        return stores.figures() if stores is not None and get_serving().enable_response_store else None

    async def scheduler_status(self) -> list[dict]:
        states = await self.tm.get_internal_state()  # residency.py:_after_get_internal_state fills "mint"
        return [s.get("mint") for s in states if s.get("mint") is not None]

    def warm(self, lora_name: str) -> None:
        self.names.warm(self.tm, lora_name)


def _engine() -> TokenizerManagerEngine:
    from sglang.srt.entrypoints.http_server import _global_state, app

    return TokenizerManagerEngine(_global_state.tokenizer_manager, app)


def _before_launch_server(server_args, *args, **kwargs):
    config = mint_config(server_args)
    if config is None:
        return None
    if config.gateway is not None:  # --mint-gateway: join SMG once serving, leave once stopped
        from sglang_mint.gateway.registration import engine_url, watch_in_background

        watch_in_background(config.gateway, config.advertise_url or engine_url(server_args.host, server_args.port))
    from sglang.srt.entrypoints import http_server

    if "SGLANG_TIMEOUT_KEEP_ALIVE" not in os.environ:  # read by launch_server as it builds uvicorn's config
        os.environ["SGLANG_TIMEOUT_KEEP_ALIVE"] = str(IDLE_CONNECTION_S)
        logger.info("idle HTTP connections are kept %d s (SGLANG_TIMEOUT_KEEP_ALIVE)", IDLE_CONNECTION_S)
    verify_internals("frontend")  # the app's internals, before routes are added to it
    add_routes(http_server.app, _engine, auth_level(AuthLevel.ADMIN_OPTIONAL))
    http_server.app.add_middleware(BodyLimit, limit=config.max_request_bytes)  # inside the guard: it marks admins
    admin_guard.install(http_server.app, server_args.admin_api_key, admin.admin_optional_paths)
    metric_labels.install(http_server.app)
    keys = handshake_keys(server_args.api_key, server_args.admin_api_key)
    if keys:  # none asked for: no layer on every request's way
        http_server.app.add_middleware(WebSocketKeys, keys=keys)
    http_server.app.add_exception_handler(CatalogNameTaken, catalog_name_taken)
    return None
