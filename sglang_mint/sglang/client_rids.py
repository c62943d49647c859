"""A client's rid in SGLang's tokenizer manager: it never ends another tenant's request.

SGLang's scheduler ends every request whose rid STARTS WITH an aborted one's (Scheduler.abort_request),
and the tokenizer manager aborts a request by its rid when its client hangs up (or cancels it:
``/v1/responses/{id}/cancel``, a transcription's or a gRPC client's abort). Three rules keep that abort
to the request itself:

- ``refuse_prefix_rids``: a client rid that is a proper prefix of the rids SGLang makes is refused
  (400) before anything runs: "a" would have ended one in 16 of everyone's requests.
- ``_around_abort_request``: a client's abort that would also end another request in flight, one
  whose rid starts with this one's ("job" and another tenant's "job-7"), is not sent. The request
  runs to its end instead, unread, and is billed as served (a cancelled /v1/responses answer too).
  A rid of the form SGLang makes (32 hex digits) is taken as no one else's prefix. An admin's
  ``/abort_request`` is sent as SGLang sends it: every request whose rid starts with the one named
  ends.
- ``_around_create_abort_task``: 2 s after a streamed answer ends, SGLang aborts each of its rids still
  in flight, finished or not; the abort now goes only to the answer's own requests, not to a newer
  request that took the same rid (another tenant's "job", sent once the first "job" was done).

Two rid heads are the server's own (``SERVER_RID_HEADS``), and ``refuse_reserved_rids`` refuses a client rid
that starts with either: ``ADAPTER_WARM_UP_RID_HEAD``, the plugin's one-token load of an adapter
(``CatalogFrontend.warm``: a publish's, a rollback's, ``/mint/prefetch``'s); and SGLang's ``HEALTH_CHECK``,
which a busy scheduler drops unanswered and whose abort the tokenizer manager ignores: a client's
"HEALTH_CHECK_job" sent beside a running request was never answered, and its state stayed. The ledger bills
neither (``is_server_rid``): no tenant sent them. The server's own requests carry the head they may use
(``OWN_RID_HEAD``, an attribute no body can set).

Not covered: SGLang's scheduler aborts a request that passed ``SGLANG_REQ_WAITING_TIMEOUT`` or
``SGLANG_REQ_RUNNING_TIMEOUT`` (both off by default) by its rid too, inside the scheduler, past these
hooks: with those set, a timed-out "job" ends "job-7" as well. The log says so as the server starts.

With ``--enable-mint`` the tokenizer manager is SGLang's only one (``config.py`` refuses
``--tokenizer-worker-num`` above 1), so its ``rid_to_state`` holds every request in flight.
"""

from __future__ import annotations

import logging
import uuid
from contextvars import ContextVar

from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX

from sglang_mint.frontend.admin_guard import ADMIN_CALL
from sglang_mint.sglang.flags import mint_config

logger = logging.getLogger("sglang_mint")

# The request whose streamed answer ended, while SGLang's abort task for it runs (_around_create_abort_task)
_ABORTING_FOR: ContextVar[object | None] = ContextVar("sglang_mint.aborting_for", default=None)


SGLANG_RID_LENGTH = 32  # uuid4().hex: GenerateReqInput's own rids, and each sample's of n > 1
HEX = frozenset("0123456789abcdef")
# What SGLang puts before the uuid4().hex of the rids it makes: nothing (/generate, the OpenAI endpoints
# without a client rid), "resp_" (/v1/responses: ResponsesRequest.request_id), "HEALTH_CHECK_" (/health_generate).
SGLANG_RID_HEADS = ("", "resp_", HEALTH_CHECK_RID_PREFIX + "_")
# The plugin's one-token loads of an adapter: ADAPTER_WARM_UP_RID_HEAD + uuid4().hex (adapter_warm_up_rid)
ADAPTER_WARM_UP_RID_HEAD = "mint-warm-up-"
SERVER_RID_HEADS = {
    ADAPTER_WARM_UP_RID_HEAD: "the server's own (its one-token warm-ups of an adapter, not billed)",
    HEALTH_CHECK_RID_PREFIX: "SGLang's health checks (a busy server drops them unanswered, and ignores their aborts)",
}
# The attribute of a request object the server made itself: the reserved head its rid may have
OWN_RID_HEAD = "_mint_own_rid_head"
HEALTH_CHECK_PATHS = ("/health", "/health_generate")  # where SGLang sends its own health check


def adapter_warm_up_rid() -> str:
    return ADAPTER_WARM_UP_RID_HEAD + uuid.uuid4().hex


def is_server_rid(rid) -> bool:
    """Whether ``rid`` is one of the server's own requests' (an adapter's warm-up, a health check)."""
    return isinstance(rid, str) and rid.startswith(tuple(SERVER_RID_HEADS))


def _prefix_of_sglang_rid(rid: str) -> bool:
    """Whether ``rid`` is a proper prefix of a rid SGLang makes: "", "a", "resp", "resp_a" are ("": a request
    timeout, SGLANG_REQ_*_TIMEOUT, aborts it by its rid, so every request); "resp_" + 32 hex digits, "job-7"
    are not."""
    for head in SGLANG_RID_HEADS:
        if len(rid) <= len(head):
            if head.startswith(rid):
                return True
        elif rid.startswith(head) and len(rid) - len(head) < SGLANG_RID_LENGTH and set(rid[len(head):]) <= HEX:
            return True
    return False


def refuse_prefix_rids(rid) -> None:
    """SGLang aborts every request whose rid STARTS WITH an aborted one's (Scheduler.abort_request), and
    a request that ends early (its client hung up) is aborted by its rid. A client rid that is a proper
    prefix of the rids SGLang makes (``SGLANG_RID_HEADS`` + 32 hex digits) thereby cancelled other
    tenants' requests: "a" one in 16 of them, "resp_" every /v1/responses request. Such a rid is refused
    (a ValueError: 400) before anything runs; any other is left as the client wrote it (e.g. ``"a"`` or
    ``"resp"`` refused, ``"job-7-step-3"`` or a uuid4().hex kept)."""
    for one in [rid] if isinstance(rid, str) else rid or []:
        if isinstance(one, str) and _prefix_of_sglang_rid(one):
            raise ValueError(f"rid {one!r} is a prefix of the request ids SGLang makes ({SGLANG_RID_LENGTH} hex "
                             "digits, after 'resp_' for /v1/responses): when a request ends early SGLang aborts "
                             "every request whose rid starts with its rid, other clients' too; send none, or one "
                             f"of at least {SGLANG_RID_LENGTH} characters (uuid4().hex)")


def refuse_reserved_rids(obj) -> None:
    """A client rid that starts with a head of ``SERVER_RID_HEADS`` is refused (a ValueError: 400); a request the
    server made may use the head it carries (``OWN_RID_HEAD``)."""
    own = getattr(obj, OWN_RID_HEAD, None)
    for one in [obj.rid] if isinstance(obj.rid, str) else obj.rid or []:
        for head, whose in SERVER_RID_HEADS.items():
            if isinstance(one, str) and one.startswith(head) and head != own:
                raise ValueError(f"rid {one!r}: rids that start with {head!r} are {whose}; send none, or another")


def _before_generate_request(tm, obj, request=None, *args, **kwargs):
    """TokenizerManager.generate_request BEFORE: SGLang's own health check (``/health``, ``/health_generate``,
    under ``--fastapi-root-path`` too) may use its rid head."""
    if request is None or mint_config(tm.server_args) is None:
        return
    path, root = request.url.path, request.scope.get("root_path", "")
    if root and path.startswith(root + "/"):  # as SGLang's own health route compares it
        path = path[len(root):]
    if path in HEALTH_CHECK_PATHS:
        setattr(obj, OWN_RID_HEAD, HEALTH_CHECK_RID_PREFIX)


def _around_abort_request(original, tm, rid: str = "", abort_all: bool = False, *args, **kwargs):
    """TokenizerManager.abort_request AROUND: a client's abort of ``rid`` (a hang-up, a cancel, a failed
    handler's cleanup) is not sent while another request in flight has a rid that starts with it. SGLang
    would end that one too: a tenant that sent rid "job", read one token and hung up ended another
    tenant's "job-7" midway."""
    state = tm.rid_to_state.get(rid)
    if (abort_all or state is None or getattr(state, "abort_sent", False) or ADMIN_CALL.get() is not None
            or mint_config(tm.server_args) is None):
        return original(tm, rid, abort_all, *args, **kwargs)  # (SGLang sends nothing for one not in flight or sent)
    owner = _ABORTING_FOR.get()
    if owner is not None and not _belongs_to(state, owner):
        return None  # the rid is a newer request's now: the answer that ended had finished
    if not _extended_in_flight(tm.rid_to_state, rid):
        return original(tm, rid, abort_all, *args, **kwargs)
    if not getattr(state, "_mint_abort_held", False):  # logged once: SGLang may ask again 2 s later
        state._mint_abort_held = True
        logger.info("request %r runs to its end, unread: its client ended it, and SGLang's abort of it would end "
                    "every request whose rid starts with %r, another of those is in flight", rid, rid)
    return None


def _around_create_abort_task(original, tm, obj, *args, **kwargs):
    """TokenizerManager.create_abort_task AROUND: SGLang's task, which aborts each rid of ``obj`` still in
    ``rid_to_state`` 2 s after its streamed answer ended, runs on behalf of ``obj``: ``_around_abort_request``
    lets it abort only ``obj``'s own requests. A rid there may be a newer request's: a stream that ran to
    its end, then another tenant's request with the same rid, was aborted 2 s in."""
    tasks = original(tm, obj, *args, **kwargs)
    if mint_config(tm.server_args) is not None:
        for task in tasks.tasks:
            task.func = _on_behalf_of(obj, task.func)
    return tasks


def _on_behalf_of(obj, abort_later):
    async def run(*args, **kwargs):
        token = _ABORTING_FOR.set(obj)
        try:
            return await abort_later(*args, **kwargs)
        finally:
            _ABORTING_FOR.reset(token)

    return run


def _belongs_to(state, obj) -> bool:
    """Whether ``state`` (a ReqState, or None) is one of ``obj``'s requests: ``obj`` itself, or one of the
    prompts of its batch (GenerateReqInput's ``_sub_obj_cache``, the objects its states hold)."""
    return state is not None and (state.obj is obj
                                  or any(state.obj is sub for sub in obj.__dict__.get("_sub_obj_cache", {}).values()))


def _extended_in_flight(rid_to_state, rid) -> bool:
    """Whether a request in flight other than ``rid``'s own has a rid that starts with ``rid``. A rid of
    the form SGLang makes (32 hex digits: a uuid4().hex) is taken as none: only a client that read it,
    its own requester, could have sent a rid that starts with it (a client that writes one that is not
    random, 32 zeros, can be ended through it). So the scan of every rid in flight is paid only by aborts
    of rids clients wrote (4,096 hang-ups among 4,096 such requests: 1.00-1.02 s of the event loop at 41e3ab4
    on a 2-core machine, 3.3-3.4 ms for as many of SGLang's rids; best of 3 runs each)."""
    if not isinstance(rid, str) or _made_by_sglang(rid):
        return False
    return any(other != rid and other.startswith(rid) for other in rid_to_state)


def _made_by_sglang(rid: str) -> bool:
    """Whether ``rid`` has the form of the rids SGLang makes: ``SGLANG_RID_HEADS`` + 32 hex digits."""
    for head in SGLANG_RID_HEADS:
        if len(rid) == len(head) + SGLANG_RID_LENGTH and rid.startswith(head) and set(rid[len(head):]) <= HEX:
            return True
    return False


def warn_of_scheduler_timeouts() -> None:
    """Say, as the server starts, what ``SGLANG_REQ_WAITING_TIMEOUT`` or ``SGLANG_REQ_RUNNING_TIMEOUT``
    (off by default) does with rids clients write: the scheduler aborts a timed-out request by its rid,
    past these hooks, so the requests whose rids start with it end too."""
    from sglang.srt.environ import envs

    timeouts = [name for name in ("SGLANG_REQ_WAITING_TIMEOUT", "SGLANG_REQ_RUNNING_TIMEOUT")
                if getattr(envs, name).get() > 0]
    if timeouts:
        logger.warning("%s set: SGLang's scheduler aborts a request that times out by its rid, and with it every "
                       "request whose rid starts with that rid, another client's too (\"job\" ends \"job-7\"); "
                       "clients should send no rid, or a uuid4().hex", " and ".join(timeouts))
