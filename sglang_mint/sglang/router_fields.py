"""The fields a router writes into a request: with ``--enable-mint`` only an admin's request may write them.

SGLang takes them from any request body, and from headers (``X-Data-Parallel-Rank`` on the OpenAI routes;
``x-override-*`` with ``SGLANG_ENABLE_REQUEST_HEADER_OVERRIDES=1``). A router in front of the engines sets
them; a tenant that sets them acts on the other tenants' requests:

- ``priority``, under ``--enable-priority-scheduling``: a request of higher priority preempts running
  requests, and with ``--max-queued-requests`` a full queue aborts queued ones of lower priority;
- ``routed_dp_rank`` (its old name ``data_parallel_rank``), under ``--dp-size`` above 1: pins the request to
  one DP rank, past ``--mint-dp-dispatch affinity``, where another tenant's adapter is kept warm.

Tenants share one ``--api-key``, so with ``--enable-mint`` a request may set these only when it carries
``--admin-api-key``'s key (``Authorization: Bearer KEY``; ``sglang/admin.py`` admits that key to the tenants'
routes), or comes from inside the server's process (``sglang.Engine``, the plugin's warm-ups: no HTTP
request). A caller on loopback is not enough here, unlike on the admin endpoints: these fields ride on the
tenants' own routes, which a proxy on the same machine (SMG) relays without a forwarding header. Any other
request that sets one is refused (400 naming it); where SGLang ignores the field (no priority scheduling,
one DP rank) it is left to SGLang, so clients that always send ``priority: 0`` keep working.

Not covered: the prefill-decode hand-off fields (``bootstrap_*``, ``disagg_prefill_dp_rank``). SGLang's own
warm-up and health checks set them over HTTP under disaggregation, and its router sets them on every
request; a tenant that reaches a disaggregated engine past its router can name them. (``/v1/responses``
reads a body's ``priority`` but SGLang 0.5.23 never passes it on.)
"""

from __future__ import annotations

from sglang_mint.frontend.admin_guard import carries_key
from sglang_mint.sglang.flags import mint_config

# field -> (whether SGLang acts on it, given the tokenizer manager; where else than the body it is read from)
ROUTER_FIELDS = {
    "priority": (lambda tm: tm.enable_priority_scheduling, "or the x-override-priority header"),
    "routed_dp_rank": (lambda tm: tm.server_args.dp_size > 1,
                       "or the X-Data-Parallel-Rank or x-override-routed-dp-rank header"),
    "data_parallel_rank": (lambda tm: tm.server_args.dp_size > 1, ""),
}
# The attribute of a request object: the ROUTER_FIELDS its caller wrote without the right to
WRITTEN = "_mint_router_fields_written"


def _before_generate_request(tm, obj, request=None, *args, **kwargs):
    """TokenizerManager.generate_request BEFORE, as the client wrote the request (SGLang fills in
    ``--default-priority-value`` next): note the ``ROUTER_FIELDS`` it wrote without the right to (refused
    by ``refuse_router_fields``)."""
    if mint_config(tm.server_args) is None or request is None:
        return
    written = [field for field, (acted_on, _) in ROUTER_FIELDS.items()
               if getattr(obj, field, None) is not None and acted_on(tm)]
    admin_api_key = tm.server_args.admin_api_key
    if written and not (admin_api_key and carries_key(request.scope, admin_api_key)):  # the key: only if needed
        setattr(obj, WRITTEN, written)


def refuse_router_fields(obj) -> None:
    """A request that wrote one of ``ROUTER_FIELDS`` without the right to is refused (a ValueError: 400).
    Called with mint on, inside generate_request, before the request is sent on."""
    for field in getattr(obj, WRITTEN, ()):
        headers = ROUTER_FIELDS[field][1]
        where = f"in the body {headers}" if headers else "in the body"
        raise ValueError(f"{field}: a router's field, which acts on other tenants' requests; with --enable-mint "
                         f"only a request carrying the server's --admin-api-key may set it ({where}); leave it out")
