"""The fields a router writes into a request: with ``--enable-mint`` only an admin's request may write them.

SGLang takes them from any request body, and some from headers (``X-Data-Parallel-Rank`` on the OpenAI
routes; ``x-override-*`` with ``SGLANG_ENABLE_REQUEST_HEADER_OVERRIDES=1``). A router in front of the
engines sets them; a tenant that sets them acts on the other tenants' requests:

- ``priority``: with ``--enable-priority-scheduling``, a request of higher priority preempts running
  requests, and with ``--max-queued-requests`` a full queue aborts queued ones of lower priority;
- ``routed_dp_rank`` (its old name ``data_parallel_rank``): pins the request to one DP rank, past
  ``--mint-dp-dispatch affinity``, so one tenant's load lands where another's adapter is kept warm;
- ``disagg_prefill_dp_rank`` and ``bootstrap_host``, ``bootstrap_port``, ``bootstrap_room``,
  ``bootstrap_pair_key``: under prefill-decode disaggregation, which prefill rank and which KV hand-off
  a request joins.

Tenants share one ``--api-key``, so a request may set these only when it carries ``--admin-api-key``'s key
(``Authorization: Bearer KEY``), or comes from inside the server's own process (``sglang.Engine``, the
plugin's warm-ups: no HTTP request). A caller on loopback is not enough here, unlike on the admin
endpoints: these fields ride on the tenants' own routes, which a proxy on the same machine (SMG) relays
without a forwarding header. Any other request that sets one is refused (400 naming it).

(``/v1/responses`` reads a body's ``priority`` but SGLang 0.5.23 never passes it on to the request: there
it has no effect, and is not refused.)
"""

from __future__ import annotations

from sglang_mint.frontend.admin_guard import carries_key
from sglang_mint.sglang.flags import mint_config

# field -> where else than the body SGLang reads it from
ROUTER_FIELDS = {
    "priority": "or the x-override-priority header",
    "routed_dp_rank": "or the X-Data-Parallel-Rank or x-override-routed-dp-rank header",
    "data_parallel_rank": "",
    "disagg_prefill_dp_rank": "or the x-override-disagg-prefill-dp-rank header",
    "bootstrap_host": "or the x-override-bootstrap-host header",
    "bootstrap_port": "or the x-override-bootstrap-port header",
    "bootstrap_room": "or the x-override-bootstrap-room header",
    "bootstrap_pair_key": "",
}
# The attribute of a request object: the ROUTER_FIELDS its caller wrote without the right to
WRITTEN = "_mint_router_fields_written"


def _before_generate_request(tm, obj, request=None, *args, **kwargs):
    """TokenizerManager.generate_request BEFORE, as the client wrote the request (SGLang fills in
    ``--default-priority-value`` next): note the ``ROUTER_FIELDS`` it wrote without the right to (refused
    by ``refuse_router_fields``)."""
    if mint_config(tm.server_args) is None or request is None:
        return
    admin_api_key = tm.server_args.admin_api_key
    if admin_api_key and carries_key(request.scope, admin_api_key):
        return
    written = [field for field in ROUTER_FIELDS if _written(getattr(obj, field, None))]
    if written:
        setattr(obj, WRITTEN, written)


def refuse_router_fields(obj) -> None:
    """A request that wrote one of ``ROUTER_FIELDS`` without the right to is refused (a ValueError: 400).
    Called with mint on, inside generate_request, before the request is sent on."""
    for field in getattr(obj, WRITTEN, ()):
        headers = ROUTER_FIELDS[field]
        where = f"in the body {headers}" if headers else "in the body"
        raise ValueError(f"{field}: a router's field, which acts on other tenants' requests; with --enable-mint "
                         f"only a request carrying the server's --admin-api-key may set it ({where}); leave it out")


def _written(value) -> bool:
    """A value the client gave: not None, nor a list holding only None."""
    if isinstance(value, list):
        return any(one is not None for one in value)
    return value is not None
