"""The ``/mint/*`` HTTP endpoints of a server launched with ``--enable-mint``.

::

    GET  /mint/status                           residency and catalog counters
    GET  /mint/usage?adapter=&since=&until=&by=  the usage ledger: per adapter, revision and minute
    POST /mint/prefetch                         {"adapters": [id, ...]}: load them ahead of traffic
    GET  /mint/inbox                            where a trainer on this machine may put a publish's files
    POST /mint/adapters/{id}/revisions          publish a new revision and make it current
    POST /mint/adapters/{id}/rollback           {"to": N} or no body: the previous revision
    GET  /mint/adapters/{id}                    the adapter's revisions and their metadata

Publishing takes ``multipart/form-data``: the files ``adapter_config.json`` and
``adapter_model.safetensors`` (or ``adapter.mintpack`` alone), named by their
file names, and the optional fields ``expected_revision`` (refuse with 409
unless the new revision gets this number), ``metadata`` (a JSON object kept
with the revision), ``pack`` (``true`` stores it packed), ``warm``
(``false`` skips loading it right away; the default is ``durable``'s) and ``durable``
(``false``: answer once the revision is recorded and handed to the engine in memory,
storing its blob after the answer; see staged_revisions.py). For example::

    curl -F files=@adapter_config.json -F files=@adapter_model.safetensors \\
         -F metadata='{"step": 1200}' http://host:30000/mint/adapters/acme/bot/revisions
    -> 201 {"adapter_id": "acme/bot", "revision": 4, "digest": "9f2c...", "format": "peft", "durable": true}

A request that arrives after the 201 is served by revision 4; requests in
flight finish on the revision they started with.

Who may call them: every one is an admin endpoint (``admin_guard.py`` holds the
rule and the list). They change what every tenant is served, or, ``/mint/status``,
name the adapters other tenants use, so the engine marks them admin (SGLang:
``AuthLevel.ADMIN_OPTIONAL``, passed in as ``mark_admin``): with ``--admin-api-key K``
the guard admits only ``Authorization: Bearer K`` (401 otherwise); without
an admin key they answer only a loopback TCP peer whose request carries no
forwarding header (403 for anyone else, saying how to enable them).

What the handlers need from the engine is a ``MintEngine``, read per request
(``sglang/endpoints.py`` reads it off SGLang's tokenizer manager).

Errors use OpenAI's shape, ``{"error": {"message", "type", "code"}}``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import socket
from typing import Callable, Protocol

from fastapi import Request
from fastapi.responses import ORJSONResponse

from sglang_mint.catalog.ids import revision_name, validate_adapter_id
from sglang_mint.catalog.metadata import check_metadata, lone_surrogate, shown_metadata
from sglang_mint.catalog.upload import publish_files, upload_folder
from sglang_mint.catalog.upload_stream import (RETRY_AFTER_S, ascii_int, declared_length, read_capped,
                                               received_upload, upload_gate, uploads_in_flight)
from sglang_mint.config import MintConfig
from sglang_mint.errors import MintError, no_room, shown
from sglang_mint.frontend.admin_guard import ADMITTED
from sglang_mint.frontend.catalog_names import CatalogNames
from sglang_mint.residency.host_bytes import proportional_sizes
from sglang_mint.usage.ledger import FIELDS as USAGE_FIELDS
from sglang_mint.usage.ledger import parse_moment, read_ledger

MAX_PREFETCH = 1024
MAX_PREFETCH_BODY = 1 << 20  # 1,024 ids of at most 128 characters fit in about 140 KB


class MintEngine(Protocol):
    """What the ``/mint/*`` handlers need from the engine's frontend process."""

    names: CatalogNames | None  # the catalog view; None without --mint-catalog
    config: MintConfig
    max_lora_rank: int | None  # the largest rank an adapter may have (SGLang's --max-lora-rank)
    registered_names: int  # LoRA names the engine has registered now
    stored_responses: dict | None  # the /v1/responses store's figures (response_store.py); None without one

    async def scheduler_status(self) -> list[dict]:
        """Each scheduler's residency status (``residency/host_bytes.py:node_status``)."""

    def warm(self, lora_name: str) -> None:
        """Start loading ``lora_name`` (``"acme/bot@3"``) ahead of traffic, not awaited."""


def add_routes(app, engine: Callable[[], MintEngine], mark_admin: Callable) -> None:
    """Add the ``/mint/*`` routes to the FastAPI ``app``, once; ``engine()`` is called per request,
    ``mark_admin`` marks each handler as the engine's admin endpoint."""
    if any(getattr(r, "path", None) == "/mint/status" for r in app.routes):
        return
    app.state.mint_engine = engine
    app.add_api_route("/mint/status", mark_admin(mint_status), methods=["GET"])
    app.add_api_route("/mint/prefetch", mark_admin(mint_prefetch), methods=["POST"])
    app.add_api_route("/mint/usage", mark_admin(mint_usage), methods=["GET"])
    app.add_api_route("/mint/inbox", mark_admin(mint_inbox), methods=["GET"])
    # {adapter_id:path}: ids hold slashes ("acme/bot"); the suffix routes come first.
    app.add_api_route("/mint/adapters/{adapter_id:path}/revisions", mark_admin(publish_revision), methods=["POST"])
    app.add_api_route("/mint/adapters/{adapter_id:path}/rollback", mark_admin(rollback_adapter), methods=["POST"])
    app.add_api_route("/mint/adapters/{adapter_id:path}", mark_admin(show_adapter), methods=["GET"])


# -- helpers ---------------------------------------------------------------------
class _Refused(Exception):
    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        super().__init__(message)
        self.response = error(status, message, kind)


def error(status: int, message: str, kind: str = "invalid_request_error") -> ORJSONResponse:
    return ORJSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)


def _admin_engine(request: Request) -> MintEngine:
    """The engine of an admitted admin call; raises _Refused."""
    _check_admitted(request)
    return request.app.state.mint_engine()


def _with_catalog(request: Request) -> tuple[MintEngine, CatalogNames]:
    """(engine, its catalog view) for an admin call that needs the catalog; raises _Refused."""
    engine = _admin_engine(request)
    names = engine.names
    if names is None:
        raise _Refused(400, f"{request.url.path} needs a catalog: launch with --mint-catalog")
    return engine, names


def _check_admitted(request: Request) -> None:
    """admin_guard.AdminGuard decides who is admin and marks what it lets through; a request it did
    not see (the guard missing) is refused, never trusted."""
    if request.scope.get(ADMITTED) is None:
        raise _Refused(403, f"{request.url.path} is an admin endpoint and this server's admin guard did not admit "
                            "this request", "permission_error")


_ERROR_KINDS = {409: "conflict", 507: "server_error"}


def _answer(exc: MintError) -> ORJSONResponse:
    return error(exc.http_status, str(exc), _ERROR_KINDS.get(exc.http_status, "invalid_request_error"))


def _refusals(handler):
    @functools.wraps(handler)  # FastAPI reads the handler's own signature (path parameters)
    async def wrapped(request: Request, *args, **kwargs):
        try:
            return await handler(request, *args, **kwargs)
        except _Refused as exc:
            return exc.response
        except MintError as exc:
            return _answer(exc)
        except OSError as exc:  # a write of the catalog or of staging found the disk full
            refused = no_room(exc, f"{request.method} {request.url.path}")
            if refused is None:
                raise
            return _answer(refused)

    return wrapped


def _flag(fields: dict, name: str, default: bool | None) -> bool | None:
    value = fields.get(name)
    if value is None:
        return default
    if value.lower() in ("true", "1", "yes"):
        return True
    if value.lower() in ("false", "0", "no"):
        return False
    raise _Refused(400, f"field {name!r} must be true or false, got {value!r}")


def _json(text):
    """``json.loads``, with JSON nested past Python's recursion limit (``"[" * 40000``) a ValueError too."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("nested too deep") from None


def _revision_json(rev) -> dict:
    # "digest" is null for a durable=false revision: its files are hashed when they are stored.
    return {"adapter_id": rev.adapter_id, "revision": rev.revision, "digest": rev.content_digest or None,
            "format": rev.format, "durable": rev.durable}


# -- endpoints -------------------------------------------------------------------
@_refusals
async def mint_status(request: Request):
    engine = _admin_engine(request)
    names = engine.names
    schedulers = await engine.scheduler_status()
    await asyncio.to_thread(_add_process_memory, schedulers)
    body = {
        "catalog": None if names is None else names.catalog.display,  # a URL shows *** for its password
        "resolves": 0 if names is None else names.resolves,
        "catalog_queries": 0 if names is None else names.catalog.lookups,
        "registered_names": engine.registered_names,
        "uploads_in_flight": uploads_in_flight(request.app),
        "stored_responses": engine.stored_responses,
        "schedulers": schedulers,
    }
    return ORJSONResponse(body)


def _add_process_memory(schedulers: list[dict]) -> None:
    """``pss_bytes`` and ``pss_data_bytes`` of each scheduler (and TP rank) on this machine, read
    here: the read walks the scheduler's page tables (38 ms at 2.7 GB held), which on the
    scheduler's own loop would stall every batch behind it. A rank on another machine gets None."""
    here = socket.gethostname()  # compared with each scheduler's own report, no traffic
    read: dict[int, dict] = {}  # a scheduler appears again in its ranks list: each pid is read once
    for status in schedulers:
        for entry in (status, *status.get("ranks", ())):
            pid = entry.get("pid")
            if entry.get("host") != here or pid is None:
                entry.update(pss_bytes=None, pss_data_bytes=None)
                continue
            if pid not in read:
                read[pid] = proportional_sizes(pid)
            entry.update(read[pid])


@_refusals
async def mint_usage(request: Request):
    """``GET /mint/usage?adapter=acme/bot&since=2026-12-05T04:00Z&until=...&by=minute|adapter``: the
    usage ledger's rows (usage/ledger.py) of every engine writing to this server's ``--mint-usage-dir``,
    per minute or (``by=adapter``) one per adapter and revision over the span, their totals, and the
    engines whose files were read (engines sharing a folder answer alike: usage/engines.py)."""
    engine = _admin_engine(request)
    if engine.config.usage_dir is None:
        raise _Refused(404, "this server keeps no usage ledger (--mint-usage-dir off)", "not_found_error")
    query = request.query_params
    unknown = sorted(set(query) - {"adapter", "since", "until", "by"})
    if unknown:
        raise _Refused(400, f"unknown query parameter {unknown[0]!r}: expected adapter, since, until, by")
    by = query.get("by", "minute")
    if by not in ("minute", "adapter"):
        raise _Refused(400, f"by: {shown(by)}: expected minute or adapter")
    bounds = {}
    for name in ("since", "until"):
        try:
            bounds[name] = parse_moment(query[name]) if name in query else None
        except ValueError as exc:
            raise _Refused(400, f"{name}: {exc}") from None

    rows, engines = await asyncio.to_thread(read_ledger, engine.config.usage_dir, query.get("adapter"), **bounds,
                                            per_minute=by == "minute")
    totals = {field: sum(row[field] for row in rows) for field in USAGE_FIELDS}
    return ORJSONResponse({"usage": rows, "totals": totals, "engines": engines})


@_refusals
async def mint_prefetch(request: Request):
    """``POST /mint/prefetch {"adapters": ["acme/bot", ...]}``: start loading them now."""
    engine, names = _with_catalog(request)
    raw = await read_capped(request, MAX_PREFETCH_BODY, "/mint/prefetch")
    try:
        body = _json(raw)
    except ValueError:
        body = None
    adapters = body.get("adapters") if isinstance(body, dict) else None
    if not isinstance(adapters, list) or not all(isinstance(a, str) for a in adapters):
        raise _Refused(400, 'expected JSON {"adapters": ["<adapter-id>", ...]}')
    if len(adapters) > MAX_PREFETCH:
        raise _Refused(400, f"at most {MAX_PREFETCH} adapters per call, got {len(adapters)}")
    odd = next((i for i, a in enumerate(adapters) if lone_surrogate(a) is not None), None)
    if odd is not None:  # "\ud800" in the JSON: no text, and no key the answer's errors could have
        raise _Refused(400, f"adapters[{odd}] holds a lone UTF-16 surrogate "
                            f"({lone_surrogate(adapters[odd])!r}), which is not text")
    prefetching, errors = [], {}
    for adapter_id in dict.fromkeys(adapters):
        try:
            name = names.lora_name(adapter_id)
        except MintError as exc:
            errors[adapter_id] = str(exc)
            continue
        engine.warm(name)
        prefetching.append(str(name))
    return ORJSONResponse({"prefetching": prefetching, "errors": errors})


@_refusals
async def publish_revision(request: Request, adapter_id: str):
    """Publish the uploaded adapter as the next revision of ``adapter_id`` and make it current."""
    engine, names = _with_catalog(request)
    validate_adapter_id(adapter_id)
    config = engine.config
    gate = upload_gate(request.app, config.max_concurrent_uploads)
    if not gate.enter():  # refused before a byte of the body is read
        refused = _Refused(429, f"{gate.active} uploads are being received, the most this server takes at once "
                                f"(--mint-max-concurrent-uploads {gate.limit}); retry in {RETRY_AFTER_S} s",
                           "rate_limit_error")
        refused.response.headers["Retry-After"] = str(RETRY_AFTER_S)
        raise refused
    folder = upload_folder(names.catalog)
    if names.staged is not None:  # shared memory when it has room: a durable=false publish stays there
        folder = names.staged.receive_folder(declared_length(request), folder)
    try:
        async with received_upload(request, folder, config.max_upload_bytes,
                                   f"upload for {adapter_id!r}") as (files, fields, digests):
            if "inbox" in fields:
                if files:
                    raise _Refused(400, "send the files in the body or name an inbox folder, not both")
                rev = await _publish_from_inbox(engine, names, adapter_id, fields)
            else:
                rev = await _publish_received(engine, names, adapter_id, files, fields, digests)
    finally:
        gate.leave()
    return ORJSONResponse(_revision_json(rev), status_code=201)


async def _publish_from_inbox(engine: MintEngine, names: CatalogNames, adapter_id: str, fields: dict[str, str]):
    """A publish whose files a trainer on this machine wrote into the shared-memory inbox."""
    where = f"upload for {adapter_id!r}"
    if names.staged is None or not names.staged.inbox:
        raise _Refused(400, f"{where}: this server has no shared-memory inbox; send the files in the body")
    folder, files = await asyncio.to_thread(names.staged.take, fields["inbox"], engine.config.max_upload_bytes, where)
    try:
        return await _publish_received(engine, names, adapter_id, files, fields, {})
    finally:
        await asyncio.to_thread(shutil.rmtree, folder, True)


async def _publish_received(engine: MintEngine, names: CatalogNames, adapter_id: str, files: dict[str, str],
                            fields: dict[str, str], digests: dict[str, str]):
    """publish_revision once the upload is received: the fields checked, then the adapter. With
    ``durable=false`` the revision is recorded and served from memory before its blobs are stored
    (frontend/staged_revisions.py)."""
    field = fields.get("expected_revision")
    expected = ascii_int(field)
    if field is not None and not expected:  # None: not digits, or past 18 of them; 0: no revision has it
        raise _Refused(400, f"expected_revision must be a positive integer of at most 18 digits, got {shown(field)}")
    metadata = None
    if fields.get("metadata") is not None:
        try:
            metadata = _json(fields["metadata"])
        except ValueError as exc:
            raise _Refused(400, f"metadata is not valid JSON: {exc}") from None
        check_metadata(metadata)  # a JSON object the adapter's view can write back out; before the adapter's checks
    pack = _flag(fields, "pack", None)
    durable = _flag(fields, "durable", True)
    warm = _flag(fields, "warm", durable)  # an RL step's own requests load it (MintClient.publish)
    if not durable and names.staged is None:
        raise _Refused(400, "durable=false needs a server whose frontend serves staged revisions")
    stage = None if durable else functools.partial(names.staged.stage, names.catalog)
    # The checks and the write take seconds for a large adapter: off the event loop, which keeps serving.
    rev = await asyncio.to_thread(
        publish_files, names.catalog, adapter_id, files, metadata=metadata,
        expect_revision=expected, pack=pack,
        max_rank=engine.max_lora_rank, where=f"upload for {adapter_id!r}", digests=digests, stage=stage)
    if warm:
        engine.warm(revision_name(adapter_id, rev.revision))
    return rev


@_refusals
async def rollback_adapter(request: Request, adapter_id: str):
    """Make the revision before the current one (or ``{"to": N}``) current."""
    engine, names = _with_catalog(request)
    validate_adapter_id(adapter_id)
    raw = await read_capped(request, 1 << 16, "rollback")
    to = None
    if raw.strip():
        try:
            body = _json(raw)
        except ValueError:
            body = None
        if not isinstance(body, dict) or set(body) - {"to"}:
            raise _Refused(400, 'expected no body, or JSON {"to": <revision>}')
        to = body.get("to")
        if to is not None and (not isinstance(to, int) or isinstance(to, bool) or to <= 0):
            raise _Refused(400, f"'to' must be a positive revision number, got {to!r}")
    rev = await asyncio.to_thread(names.catalog.rollback, adapter_id, to)
    engine.warm(revision_name(adapter_id, rev.revision))
    return ORJSONResponse(_revision_json(rev))


@_refusals
async def mint_inbox(request: Request):
    """Where a trainer on this machine may put a publish's files instead of sending them (client/handoff.py)."""
    _, names = _with_catalog(request)
    if names.staged is None or not names.staged.inbox:
        return error(404, "this server has no shared-memory inbox: send publishes' files in the body")
    return ORJSONResponse({"path": names.staged.inbox, "host": socket.gethostname()})


@_refusals
async def show_adapter(request: Request, adapter_id: str):
    """The adapter's current revision and every revision with its metadata."""
    _, names = _with_catalog(request)
    info = (await asyncio.to_thread(names.catalog.get, adapter_id)).to_json()
    for rev in info["revisions"]:  # what an older version stored unchecked, shown, not a 500
        rev["metadata"] = shown_metadata(rev["metadata"])
    return ORJSONResponse(info)
