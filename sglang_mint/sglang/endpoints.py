"""The ``/mint/*`` HTTP endpoints of a server launched with ``--enable-mint``.

::

    GET  /mint/status                           residency and catalog counters
    POST /mint/prefetch                         {"adapters": [id, ...]}: load them ahead of traffic
    POST /mint/adapters/{id}/revisions          publish a new revision and make it current
    POST /mint/adapters/{id}/rollback           {"to": N} or no body: the previous revision
    GET  /mint/adapters/{id}                    the adapter's revisions and their metadata

Publishing takes ``multipart/form-data``: the files ``adapter_config.json`` and
``adapter_model.safetensors`` (or ``adapter.mintpack`` alone), named by their
file names, and the optional fields ``expected_revision`` (refuse with 409
unless the new revision gets this number), ``metadata`` (a JSON object kept
with the revision), ``pack`` (``true`` stores it packed) and ``warm``
(``false`` skips loading it right away). For example::

    curl -F files=@adapter_config.json -F files=@adapter_model.safetensors \\
         -F metadata='{"step": 1200}' http://host:30000/mint/adapters/acme/bot/revisions
    -> 201 {"adapter_id": "acme/bot", "revision": 4, "digest": "9f2c...", "format": "peft"}

A request that arrives after the 201 is served by revision 4; requests in
flight finish on the revision they started with.

Who may call them: every one is an admin endpoint (``admin.py`` holds the rule
and the list). They change what every tenant is served, or, ``/mint/status``,
name the adapters other tenants use, so they carry SGLang's
``AuthLevel.ADMIN_OPTIONAL``: with ``--admin-api-key K`` SGLang's middleware admits
only ``Authorization: Bearer K`` (401 otherwise); without an admin key they answer
only a loopback TCP peer whose request carries no forwarding header (403 for
anyone else, saying how to enable them).

Errors use OpenAI's shape, ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import json

from fastapi import Request
from fastapi.responses import ORJSONResponse
from sglang.srt.utils.auth import AuthLevel, auth_level

from sglang_mint.catalog.ids import revision_name, validate_adapter_id
from sglang_mint.catalog.upload import publish_files, upload_folder
from sglang_mint.errors import MintError
from sglang_mint.frontend import admin_guard
from sglang_mint.sglang import admin
from sglang_mint.sglang.flags import mint_config
from sglang_mint.catalog.upload_stream import RETRY_AFTER_S, read_capped, received_upload, upload_gate
from sglang_mint.frontend.catalog_names import CatalogNameTaken, catalog_name_taken
from sglang_mint.sglang.frontend import CatalogFrontend, catalog_frontend

MAX_PREFETCH = 1024
MAX_PREFETCH_BODY = 1 << 20  # 1,024 ids of at most 128 characters fit in about 140 KB
_ADMIN = auth_level(AuthLevel.ADMIN_OPTIONAL)


def add_routes(app) -> None:
    if any(getattr(r, "path", None) == "/mint/status" for r in app.routes):
        return
    app.add_api_route("/mint/status", mint_status, methods=["GET"])
    app.add_api_route("/mint/prefetch", mint_prefetch, methods=["POST"])
    # {adapter_id:path}: ids hold slashes ("acme/bot"); the suffix routes come first.
    app.add_api_route("/mint/adapters/{adapter_id:path}/revisions", publish_revision, methods=["POST"])
    app.add_api_route("/mint/adapters/{adapter_id:path}/rollback", rollback_adapter, methods=["POST"])
    app.add_api_route("/mint/adapters/{adapter_id:path}", show_adapter, methods=["GET"])


def _before_launch_server(server_args, *args, **kwargs):
    if mint_config(server_args) is None:
        return None
    from sglang.srt.entrypoints import http_server

    add_routes(http_server.app)
    admin.install(http_server.app, server_args.admin_api_key)
    http_server.app.add_exception_handler(CatalogNameTaken, catalog_name_taken)
    return None


# -- helpers ---------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.response = error(status, message, kind)


def error(status: int, message: str, kind: str = "invalid_request_error") -> ORJSONResponse:
    return ORJSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _tokenizer_manager():
    from sglang.srt.entrypoints.http_server import _global_state

    return _global_state.tokenizer_manager


def _admin_frontend(request: Request) -> tuple[object, CatalogFrontend]:
    """(tokenizer manager, catalog frontend) for an admin call; raises _Refused."""
    _check_admitted(request)
    tm = _tokenizer_manager()
    frontend = catalog_frontend(tm)
    if frontend is None:
        raise _Refused(400, f"{request.url.path} needs a catalog: launch with --mint-catalog")
    return tm, frontend


def _check_admitted(request: Request) -> None:
    """admin_guard.AdminGuard decides who is admin and marks what it lets through; a request it did not
    see (the guard missing) is refused, never trusted."""
    if request.scope.get(admin_guard.ADMITTED) is None:
        raise _Refused(403, f"{request.url.path} is an admin endpoint and this server's admin guard did not admit "
                            "this request", "permission_error")


def _refusals(handler):
    @functools.wraps(handler)  # FastAPI reads the handler's own signature (path parameters)
    async def wrapped(request: Request, *args, **kwargs):
        try:
            return await handler(request, *args, **kwargs)
        except _Refused as exc:
            return exc.response
        except MintError as exc:
            return error(exc.http_status, str(exc), "conflict" if exc.http_status == 409 else "invalid_request_error")

    return _ADMIN(wrapped)


def _flag(fields: dict, name: str, default: bool | None) -> bool | None:
    value = fields.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise _Refused(400, f"field {name!r} must be true or false, got {value!r}")


def _revision_json(rev) -> dict:
    return {"adapter_id": rev.adapter_id, "revision": rev.revision, "digest": rev.content_digest,
            "format": rev.format}


# -- endpoints -------------------------------------------------------------------
@_ADMIN
async def mint_status(request: Request):
    try:
        _check_admitted(request)
    except _Refused as exc:
        return exc.response
    tm = _tokenizer_manager()
    frontend = catalog_frontend(tm)
    states = await tm.get_internal_state()
    schedulers = [s.get("mint") for s in states if s.get("mint") is not None]
    body = {
        "catalog": None if frontend is None else frontend.catalog.display,  # a URL shows *** for its password
        "resolves": 0 if frontend is None else frontend.resolves,
        "catalog_queries": 0 if frontend is None else frontend.catalog.lookups,
        "registered_names": tm.lora_registry.num_registered_loras,
        "schedulers": schedulers,
    }
    return ORJSONResponse(body)


@_refusals
async def mint_prefetch(request: Request):
    """``POST /mint/prefetch {"adapters": ["acme/bot", ...]}``: start loading them now."""
    tm, frontend = _admin_frontend(request)
    raw = await read_capped(request, MAX_PREFETCH_BODY, "/mint/prefetch")
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    adapters = body.get("adapters") if isinstance(body, dict) else None
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise _Refused(400, 'expected JSON {"adapters": ["<adapter-id>", ...]}')
    if len(adapters) > MAX_PREFETCH:
        raise _Refused(400, f"at most {MAX_PREFETCH} adapters per call, got {len(adapters)}")
    prefetching, errors = [], {}
    for adapter_id in dict.fromkeys(adapters):
        try:
            name = frontend.lora_name(adapter_id)
        except MintError as exc:
            errors[adapter_id] = str(exc)
            continue
        frontend.warm(tm, name)
        prefetching.append(str(name))
    return ORJSONResponse({"prefetching": prefetching, "errors": errors})


@_refusals
async def publish_revision(request: Request, adapter_id: str):
    """Publish the uploaded adapter as the next revision of ``adapter_id`` and make it current."""
    tm, frontend = _admin_frontend(request)
    validate_adapter_id(adapter_id)
    config = mint_config(tm.server_args)
    gate = upload_gate(request.app, config.max_concurrent_uploads)
    if not gate.enter():  # refused before a byte of the body is read
        refused = _Refused(429, f"{gate.active} uploads are being received, the most this server takes at once "
                                f"(--mint-max-concurrent-uploads {gate.limit}); retry in {RETRY_AFTER_S} s",
                           "rate_limit_error")
        refused.response.headers["Retry-After"] = str(RETRY_AFTER_S)
        raise refused
    try:
        async with received_upload(request, upload_folder(frontend.catalog), config.max_upload_bytes,
                                   f"upload for {adapter_id!r}") as (files, fields):
            rev = await _publish_received(tm, frontend, adapter_id, files, fields)
    finally:
        gate.leave()
    return ORJSONResponse(_revision_json(rev), status_code=201)


async def _publish_received(tm, frontend: CatalogFrontend, adapter_id: str, files: dict[str, str],
                            fields: dict[str, str]):
    """publish_revision once the upload is on disk: the fields checked, then the adapter."""
    expected = fields.get("expected_revision")
    if expected is not None and not (expected.isdigit() and int(expected) > 0):
        raise _Refused(400, f"expected_revision must be a positive integer, got {expected!r}")
    metadata = None
    if fields.get("metadata") is not None:
        try:
            metadata = json.loads(fields["metadata"])
        except ValueError as exc:
            raise _Refused(400, f"metadata is not valid JSON: {exc}") from None
        if not isinstance(metadata, dict):
            raise _Refused(400, 'metadata must be a JSON object, e.g. {"step": 1200}')
    pack = _flag(fields, "pack", None)
    warm = _flag(fields, "warm", True)
    # The checks and the write take seconds for a large adapter: off the event loop, which keeps serving.
    rev = await asyncio.to_thread(
        publish_files, frontend.catalog, adapter_id, files, metadata=metadata,
        expect_revision=int(expected) if expected is not None else None, pack=pack,
        max_rank=tm.server_args.max_lora_rank, where=f"upload for {adapter_id!r}")
    if warm:
        frontend.warm(tm, revision_name(adapter_id, rev.revision))
    return rev


@_refusals
async def rollback_adapter(request: Request, adapter_id: str):
    """Make the revision before the current one (or ``{"to": N}``) current."""
    tm, frontend = _admin_frontend(request)
    validate_adapter_id(adapter_id)
    raw = await read_capped(request, 1 << 16, "rollback")
    to = None
    if raw.strip():
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - {"to"}:
            raise _Refused(400, 'expected no body, or JSON {"to": <revision>}')
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool) or to <= 0):
            raise _Refused(400, f"'to' must be a positive revision number, got {to!r}")
    rev = await asyncio.to_thread(frontend.catalog.rollback, adapter_id, to)
    frontend.warm(tm, revision_name(adapter_id, rev.revision))
    return ORJSONResponse(_revision_json(rev))


@_refusals
async def show_adapter(request: Request, adapter_id: str):
    """The adapter's current revision and every revision with its metadata."""
    _, frontend = _admin_frontend(request)
    info = await asyncio.to_thread(frontend.catalog.get, adapter_id)
    return ORJSONResponse(info.to_json())
