"""The HTTP side of a server with ``--enable-mint``, engine-neutral (Starlette/FastAPI, never sglang).

- ``admin_guard.py``: who may call an admin endpoint (a local TCP peer without
  forwarding headers, or ``--admin-api-key``), as ASGI middleware.

The SGLang glue (``sglang_mint/sglang/``) installs them and supplies what they
need from SGLang.
"""
