"""The admin guard on SGLang's app (the rule itself is ``frontend/admin_guard.py``).

SGLang marks its admin endpoints ``AuthLevel.ADMIN_OPTIONAL``; the guard covers
every route so marked, ``/mint/*`` included. ``_after_uvicorn_config_load``
records the TCP peer before uvicorn's proxy-headers middleware can rewrite it.
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
