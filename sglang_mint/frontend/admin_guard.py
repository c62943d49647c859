"""Who may call an admin endpoint of a server launched with ``--enable-mint``: the one rule.

Engine-neutral: which routes the engine itself marks admin is the engine's to say
(``install``'s ``marked_paths``; for SGLang ``sglang/admin.py:admin_optional_paths``).

The admin endpoints are every endpoint SGLang marks ``AuthLevel.ADMIN_OPTIONAL``
(adapter loads, weight updates, ``/flush_cache``, profiling...) and the plugin's
``/mint/*``, all listed in ``ADMIN_ENDPOINTS``. They change what every tenant is
served, or show other tenants' adapters, so:

- with ``--admin-api-key K``, only ``Authorization: Bearer K`` is admitted (401
  otherwise), from anywhere. The guard checks the key itself: SGLang's middleware
  decides "admin" from its route marks, and a route added through ``include_router``
  (``/scale_elastic_ep``) escapes them, so a tenant key would pass there;
- without it (``--api-key`` alone included: every tenant holds that key), they
  answer only a caller whose TCP connection comes from this machine (a loopback
  address, 127.0.0.0/8 or ::1, or the very address the connection reached: SGLang
  bound to ``--host 10.0.0.5`` calls its own ``/freeze_gc`` that way after warmup)
  and whose request carries no forwarding header
  (``X-Forwarded-For``, ``Forwarded``, ``X-Real-IP``): such a header means a proxy
  relayed the request, so the caller is somewhere else. Everyone else gets 403 in
  OpenAI's error shape, saying how to enable admin calls.

Stock SGLang answers these endpoints to anyone who reaches the port when no key
is set; without ``--enable-mint`` nothing here is installed.

The TCP peer is not ``request.client.host``. uvicorn's protocol fills the ASGI
scope's ``client`` from the socket (``transport.get_extra_info("peername")``); SGLang
runs uvicorn with ``proxy_headers`` on (uvicorn's default), so uvicorn wraps the app
in its ProxyHeadersMiddleware, which replaces ``scope["client"]`` with the first
untrusted ``X-Forwarded-For`` entry whenever the peer is in ``FORWARDED_ALLOW_IPS``
(``127.0.0.1`` by default, ``*`` in many container images). Behind a proxy that
trusts every hop, a caller on another machine who sends ``X-Forwarded-For:
127.0.0.1`` would look local. So the engine's hook on ``uvicorn.Config.load``
(``sglang/admin.py``) wraps uvicorn's loaded app, from the outside, in ``RecordPeer``,
which runs before that middleware and copies the socket's peer into ``scope[PEER]``
(and the local end, ``scope["server"]``, into ``scope[LOCAL]``); the guard reads
only those. A server that does not run the
app through ``uvicorn.Config.load`` (``--enable-http2`` runs Granian) records no
peer, and its admin endpoints then need ``--admin-api-key``.
"""

from __future__ import annotations

import ipaddress
import logging
import secrets
from contextvars import ContextVar
from typing import Callable

from fastapi.responses import ORJSONResponse

logger = logging.getLogger("sglang_mint")

# Every admin endpoint, by route path: SGLang 0.5.23's ADMIN_OPTIONAL routes
# (entrypoints/http_server.py and elastic_ep.py; /dumper/{method} exists only with
# DUMPER_SERVER_PORT=reuse), then the plugin's (mint_api.py). A route SGLang marks
# ADMIN_OPTIONAL that is missing here is guarded all the same, with a warning.
ADMIN_ENDPOINTS: tuple[str, ...] = (
    # adapters
    "/load_lora_adapter", "/load_lora_adapter_from_tensors", "/unload_lora_adapter",
    # weights
    "/update_weights_from_disk", "/update_weights_from_tensor", "/update_weights_from_distributed",
    "/update_weights_from_ipc", "/update_weight_version", "/init_weights_update_group",
    "/destroy_weights_update_group", "/begin_weight_update", "/end_weight_update", "/get_weights_by_name",
    "/weights_checker", "/init_weights_send_group_for_remote_instance", "/send_weights_to_remote_instance",
    "/get_remote_instance_transfer_engine_info", "/remote_instance_transfer_engine_info",
    "/release_memory_occupation", "/resume_memory_occupation",
    # caches and corpora
    "/flush_cache", "/hicache/storage-backend", "/hicache/storage-backend/clear",
    "/add_external_corpus", "/remove_external_corpus", "/list_external_corpora",
    # requests and scheduling
    "/abort_request", "/pause_generation", "/continue_generation", "/slow_down", "/set_internal_state",
    "/pd_role_switch", "/scale_elastic_ep", "/is_scaling_elastic_ep",
    # diagnostics
    "/start_profile", "/stop_profile", "/set_trace_level", "/configure_logging", "/freeze_gc",
    "/start_expert_distribution_record", "/stop_expert_distribution_record", "/dump_expert_distribution_record",
    "/dumper/{method}",
    # sglang-mint (mint_api.py); /mint/status and /mint/usage too: they name the adapters other tenants use
    "/mint/status", "/mint/usage", "/mint/prefetch", "/mint/inbox", "/mint/adapters/{adapter_id:path}/revisions",
    "/mint/adapters/{adapter_id:path}/rollback", "/mint/adapters/{adapter_id:path}",
)

FORWARDING_HEADERS = (b"x-forwarded-for", b"forwarded", b"x-real-ip")
PEER = "sglang_mint.peer"  # scope key: (host, port) of the TCP peer, recorded before any middleware
LOCAL = "sglang_mint.local"  # scope key: (host, port) of this end of the connection, recorded with it
ADMITTED = "sglang_mint.admitted"  # scope key: set on the admin calls the guard let through
# How the admin call being answered was let through ("admin-api-key", "loopback"), for code it calls that
# has no scope (sglang/client_rids.py); None outside an admin call.
ADMIN_CALL: ContextVar[str | None] = ContextVar("sglang_mint.admin_call", default=None)
_MARK = "_mint_admin_guard"  # attribute on the FastAPI app: this app's server records peers


def leaf_routes(routes):
    """Every route, looking inside FastAPI's included routers (``_IncludedRouter.original_router``)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from leaf_routes(inner.routes)
        else:
            yield route


def is_loopback(host) -> bool:
    """``"127.0.0.1"``, ``"127.8.9.1"``, ``"::1"`` and ``"::ffff:127.0.0.1"`` are; names and garbage are not."""
    try:
        ip = ipaddress.ip_address(host)
    except (TypeError, ValueError):
        return False
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def refusal(scope) -> str | None:
    """Why this request is not a local admin caller, or None if it is."""
    for name, _ in scope.get("headers", ()):
        if name in FORWARDING_HEADERS:
            return (f"this request carries a {name.decode()} header, so a proxy forwarded it from somewhere "
                    "else")
    peer, local = scope.get(PEER), scope.get(LOCAL)
    if not peer:
        return "this server cannot see the address of the connection"
    # Both ends with the same address: this machine calling one of its own addresses. A packet
    # from elsewhere claiming a local source is dropped by the kernel (Linux: accept_local=0), and
    # a TCP handshake with a forged source cannot complete, so this is still the socket's word.
    if not (is_loopback(peer[0]) or (local and peer[0] == local[0])):
        return f"your connection comes from {peer[0]}"
    return None


class AdminGuard:
    """ASGI middleware: an admin call carries ``--admin-api-key``'s key, or without one comes from a
    local TCP peer."""

    def __init__(self, app, *, fastapi_app, admin_api_key: str | None, marked_paths: Callable[[object], set[str]]):
        self.app = app
        self.fastapi_app = fastapi_app
        self.admin_api_key = admin_api_key
        self.marked_paths = marked_paths  # the paths the engine marks admin, given the FastAPI app
        # Found on the first request, when every route exists: the admin paths without parameters
        # (one set lookup per request) and the few routes with them (a regex each).
        self._static: set[str] | None = None
        self._dynamic: list = []

    def _find_routes(self) -> None:
        marked = self.marked_paths(self.fastapi_app)
        for path in sorted(marked - set(ADMIN_ENDPOINTS)):
            logger.warning("SGLang marks %s ADMIN_OPTIONAL but sglang_mint.frontend.admin_guard.ADMIN_ENDPOINTS "
                           "does not list it; it is guarded all the same", path)
        guarded = marked | set(ADMIN_ENDPOINTS)
        self._dynamic = [r for r in leaf_routes(self.fastapi_app.router.routes)
                         if getattr(r, "path", None) in guarded and "{" in r.path]
        self._static = {path for path in guarded if "{" not in path}

    def _is_admin(self, scope) -> bool:
        """Whether the request's path is an admin route's, whatever the method: GET
        /mint/adapters/acme/bot and POST /flush_cache are admin calls, GET /v1/models is not."""
        if self._static is None:
            self._find_routes()
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root + "/"):  # --fastapi-root-path: routes match without it
            path = path[len(root):]
        return path in self._static or any(r.path_regex.match(path) for r in self._dynamic)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not self._is_admin(scope):
            return await self.app(scope, receive, send)
        if self.admin_api_key:
            if carries_key(scope, self.admin_api_key):
                return await self._admit("admin-api-key", scope, receive, send)
            message = (f"{scope['path']} is an admin endpoint: this server answers it only to requests carrying "
                       "'Authorization: Bearer KEY' with its --admin-api-key KEY")
            return await answer_error(scope, receive, send, 401, "authentication_error", message)
        why = refusal(scope)
        if why is None:
            return await self._admit("loopback", scope, receive, send)
        message = (f"{scope['path']} is an admin endpoint: without an admin API key this server answers it only "
                   f"to callers connected from this machine, and {why}. Restart the server with "
                   "--admin-api-key KEY and send 'Authorization: Bearer KEY'.")
        await answer_error(scope, receive, send, 403, "permission_error", message)

    async def _admit(self, how: str, scope, receive, send) -> None:
        scope[ADMITTED] = how
        token = ADMIN_CALL.set(how)
        try:
            await self.app(scope, _outside_admin_call(receive), _outside_admin_call(send))
        finally:
            ADMIN_CALL.reset(token)


def _outside_admin_call(channel):
    """An ASGI ``receive`` or ``send`` run with ``ADMIN_CALL`` unset. uvicorn starts the next request of a
    kept-alive connection from inside the last ``send`` of this one, and a ``receive`` that resumes reading
    a paused connection (a body past 64 KiB) registers its reader, under asyncio's own loop, in the context
    it runs in: a request started there, or a task it makes, copies that context."""
    async def outside(*args):
        token = ADMIN_CALL.set(None)
        try:
            return await channel(*args)
        finally:
            ADMIN_CALL.reset(token)

    return outside


def carries_key(scope, key: str) -> bool:
    """Whether the request's ``Authorization`` header is ``Bearer <key>`` (``is_bearer``)."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            return is_bearer(value, key)
    return False


def is_bearer(authorization: bytes, key: str) -> bool:
    """Whether an ``Authorization`` header's value is ``Bearer <key>`` (the scheme in any case, as SGLang
    reads it), compared in constant time: ``b"bearer K"`` is, ``b"Bearer tenant"`` is not."""
    scheme, _, token = authorization.partition(b" ")
    return scheme.lower() == b"bearer" and secrets.compare_digest(token, key.encode())


async def answer_error(scope, receive, send, status: int, kind: str, message: str,
                       headers: dict[str, str] | None = None) -> None:
    """Answer ``status`` in OpenAI's error shape, ``{"error": {"message", "type", "code"}}``."""
    response = ORJSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                              headers=headers)
    await response(scope, receive, send)


def install(app, admin_api_key: str | None, marked_paths: Callable[[object], set[str]]) -> None:
    """Guard ``app``'s admin endpoints (``ADMIN_ENDPOINTS`` and ``marked_paths(app)``); called once,
    before the server starts."""
    if is_guarded(app):
        return
    setattr(app, _MARK, True)
    # Added before SGLang adds its api-key middleware (launch_server), so that one runs first.
    app.add_middleware(AdminGuard, fastapi_app=app, admin_api_key=admin_api_key, marked_paths=marked_paths)


def is_guarded(app) -> bool:
    """Whether ``install`` guarded this app: only such an app's server needs ``RecordPeer``."""
    return getattr(app, _MARK, False)


class RecordPeer:
    """The outermost ASGI layer: copies the TCP peer before any middleware can rewrite ``client``."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            scope[PEER], scope[LOCAL] = scope.get("client"), scope.get("server")
        return await self.app(scope, receive, send)
