"""Catalog adapters in the tokenizer manager, and the ``/mint/status`` endpoint.

``model="acme/bot"`` resolves the adapter's current revision in the catalog
at arrival (one indexed lookup) and becomes the LoRA name ``acme/bot@3``; the
request is served by that revision even if a publish lands while it runs.
The name is registered in SGLang's LoRA registry with
``lora_id = "mint:acme/bot@3"`` and no load request: the scheduler loads it
in the background when the request reaches admission (``residency.py``).
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import Request
from fastapi.responses import ORJSONResponse
from sglang.srt.lora.lora_registry import LoRARef
from sglang.srt.plugins.hook_registry import HookRegistry, HookType

from sglang_mint.catalog import open_catalog
from sglang_mint.errors import MintError
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.residency import mint_lora_id

logger = logging.getLogger("sglang_mint")

MAX_PREFETCH = 1024
TOKENIZER_MANAGER = "sglang.srt.managers.tokenizer_manager.TokenizerManager"
HTTP_SERVER = "sglang.srt.entrypoints.http_server"


def register_hooks() -> None:
    HookRegistry.register(f"{TOKENIZER_MANAGER}.init_lora", _after_init_lora, HookType.AFTER)
    HookRegistry.register(f"{TOKENIZER_MANAGER}._resolve_lora_path", _around_tm_resolve_lora_path, HookType.AROUND)
    HookRegistry.register(f"{HTTP_SERVER}.launch_server", _before_launch_server, HookType.BEFORE)


class CatalogFrontend:
    """The tokenizer manager's view of the catalog."""

    def __init__(self, catalog_path: str):
        self.catalog = open_catalog(catalog_path)
        self.resolves = 0
        from sglang_mint.sglang.metrics import FrontendMetrics, metrics_enabled

        self.metrics = FrontendMetrics(metrics_enabled())
        self._warming: set[asyncio.Task] = set()

    def lora_name(self, adapter_id: str) -> str:
        """The LoRA name of the adapter's current revision; AdapterNotFound if unknown or deleted."""
        try:
            rev = self.catalog.resolve(adapter_id)
        except MintError:
            self.metrics.not_found.inc()
            raise
        self.resolves += 1
        self.metrics.resolves.inc()
        return f"{adapter_id}@{rev.revision}"

    async def register(self, registry, lora_path) -> None:
        names = [lora_path] if isinstance(lora_path, str) else [p for p in (lora_path or []) if p]
        for name in names:
            if "@" not in name or name in registry._registry:
                continue
            adapter_id, revision = name.rsplit("@", 1)
            ref = LoRARef(lora_id=mint_lora_id(adapter_id, int(revision)), lora_name=name,
                          lora_path=f"mint-catalog:{name}", pinned=False)
            try:
                await registry.register(ref)
            except ValueError:
                pass  # another request registered it first


    def warm(self, tm, lora_name: str) -> None:
        """Load an adapter ahead of traffic: a one-token request for it, not awaited.

        It takes the path a real request takes (registration, arrival at each
        scheduler, background read, install), so nothing else has to know about
        prefetching; the cost is one token of compute per adapter.
        """
        task = asyncio.get_running_loop().create_task(self._warm(tm, lora_name))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, tm, lora_name: str) -> None:
        from sglang.srt.managers.io_struct import GenerateReqInput

        await self.register(tm.lora_registry, lora_name)
        obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0},
                               lora_path=lora_name)
        try:
            async for _ in tm.generate_request(obj, None):
                pass
        except Exception as exc:  # the adapter's own requests will report it
            logger.warning("prefetch of %s failed: %s", lora_name, exc)


def catalog_frontend(tokenizer_manager) -> CatalogFrontend | None:
    return getattr(tokenizer_manager, "_mint_frontend", None)


def _after_init_lora(result, tm, *args, **kwargs):
    config = mint_config(tm.server_args)
    if config is not None and config.catalog is not None:
        tm._mint_frontend = CatalogFrontend(config.catalog)
    return result


async def _around_tm_resolve_lora_path(original, tm, obj):
    frontend = catalog_frontend(tm)
    if frontend is not None:
        await frontend.register(tm.lora_registry, obj.lora_path)
    return await original(tm, obj)


def _before_launch_server(server_args, *args, **kwargs):
    if mint_config(server_args) is None:
        return None
    from sglang.srt.entrypoints import http_server

    app = http_server.app
    if not any(getattr(r, "path", None) == "/mint/status" for r in app.routes):
        app.add_api_route("/mint/status", _mint_status, methods=["GET"])
        app.add_api_route("/mint/prefetch", _mint_prefetch, methods=["POST"])
    return None


async def _mint_status():
    from sglang.srt.entrypoints.http_server import _global_state

    tm = _global_state.tokenizer_manager
    frontend = catalog_frontend(tm)
    states = await tm.get_internal_state()
    schedulers = [s.get("mint") for s in states if s.get("mint") is not None]
    body = {
        "catalog": None if frontend is None else str(frontend.catalog.path),
        "resolves": 0 if frontend is None else frontend.resolves,
        "registered_names": tm.lora_registry.num_registered_loras,
        "schedulers": schedulers,
    }
    return ORJSONResponse(body)


async def _mint_prefetch(request: Request):
    """``POST /mint/prefetch {"adapters": ["acme/bot", ...]}``: start loading them now."""
    from sglang.srt.entrypoints.http_server import _global_state

    tm = _global_state.tokenizer_manager
    frontend = catalog_frontend(tm)
    if frontend is None:
        return ORJSONResponse({"error": "prefetch needs a catalog: launch with --mint-catalog"}, status_code=400)
    try:
        body = await request.json()
    except ValueError:
        body = None
    adapters = body.get("adapters") if isinstance(body, dict) else None
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        return ORJSONResponse({"error": 'expected JSON {"adapters": ["<adapter-id>", ...]}'}, status_code=400)
    if len(adapters) > MAX_PREFETCH:
        return ORJSONResponse({"error": f"at most {MAX_PREFETCH} adapters per call, got {len(adapters)}"},
                              status_code=400)
    prefetching, errors = [], {}
    for adapter_id in dict.fromkeys(adapters):
        try:
            name = frontend.lora_name(adapter_id)
        except MintError as exc:
            errors[adapter_id] = str(exc)
            continue
        frontend.warm(tm, name)
        prefetching.append(name)
    return ORJSONResponse({"prefetching": prefetching, "errors": errors})
