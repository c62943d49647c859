"""The HTTP side of a server with ``--enable-mint``, engine-neutral (Starlette/FastAPI, never sglang).

- ``admin_guard.py``: who may call an admin endpoint (a local TCP peer without
  forwarding headers, or ``--admin-api-key``), as ASGI middleware;
- ``catalog_names.py``: which adapter a request names (``model="acme/bot"``,
  ``lora_path="acme/bot@2"``): the catalog's revision, or an adapter the engine loaded;
- ``mint_api.py``: the ``/mint/*`` handlers (status, prefetch, publish, rollback, show).

The SGLang glue (``sglang_mint/sglang/``) installs them and supplies what they
need from SGLang.
"""
