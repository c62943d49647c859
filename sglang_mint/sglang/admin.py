"""The admin guard on SGLang's app (the rule itself is ``frontend/admin_guard.py``).

SGLang marks its admin endpoints ``AuthLevel.ADMIN_OPTIONAL``; the guard covers
every route so marked, ``/mint/*`` included. ``_after_uvicorn_config_load``
records the TCP peer before uvicorn's proxy-headers middleware can rewrite it.
``_after_decide_request_auth`` lets the admin key through the tenants' routes too.
"""

from __future__ import annotations

from sglang_mint.frontend import admin_guard
from sglang_mint.frontend.admin_guard import ADMIN_ENDPOINTS, leaf_routes
from sglang_mint.sglang.hooks import verify_internals

__all__ = ["ADMIN_ENDPOINTS", "admin_optional_paths"]


def admin_optional_paths(app) -> set[str]:
    """The paths of the routes whose endpoint SGLang's ``@auth_level`` marks ADMIN_OPTIONAL."""
    from sglang.srt.utils.auth import AuthLevel

    return {route.path for route in leaf_routes(app.router.routes)
            if getattr(getattr(route, "endpoint", None), "_auth_level", None) == AuthLevel.ADMIN_OPTIONAL}


def _after_uvicorn_config_load(result, config, *args, **kwargs):
    """uvicorn.Config.load AFTER: wrap the loaded app (ProxyHeadersMiddleware included) of a guarded app."""
    if admin_guard.is_guarded(config.app):
        verify_internals("frontend", uvicorn_config=config)
        config.loaded_app = admin_guard.RecordPeer(config.loaded_app)
    return result


def _after_decide_request_auth(decision, *args, **kwargs):
    """sglang.srt.utils.auth.decide_request_auth AFTER: with ``--enable-mint``, a request carrying
    ``--admin-api-key``'s key is admitted to the routes every tenant may call, as the tenants' ``--api-key``
    is. SGLang admits only the tenants' key there once both are set, so an admin could not send a request
    with a router's field (sglang/router_fields.py), which needs the admin key."""
    admin_api_key, header = kwargs.get("admin_api_key"), kwargs.get("authorization_header")
    if decision.allowed or not admin_api_key or not header:  # every admitted request returns here
        return decision
    from sglang.srt.entrypoints import http_server
    from sglang.srt.utils.auth import AuthDecision, AuthLevel

    if kwargs.get("auth_level") != AuthLevel.NORMAL or not admin_guard.is_guarded(http_server.app):
        return decision
    return AuthDecision(allowed=True) if admin_guard.is_bearer(header.encode(), admin_api_key) else decision
