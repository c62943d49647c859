"""SGLang's sessions within ``--mint-max-sessions`` and ``--mint-session-timeout`` (the rules:
``frontend/session_bounds.py``).

The tokenizer manager gives each new session its idle timeout and turns a scheduler's refusal into a 429;
the scheduler's session controller refuses a session past the limit, or a streaming one past the streaming
limit (``streaming_session_limit`` of its ``max_running_requests``), after closing those that timed out;
a streaming session's turn that would bring the KV all streaming sessions hold past half the cache is
refused (429), the session kept as it was.
A session is idle only once its requests are done: SGLang counts its timeout from a request's arrival,
so one request that ran longer than the timeout had its session closed under it.
"""

from __future__ import annotations

import logging
import time

from sglang_mint.frontend.session_bounds import (
    session_timeout,
    sessions_full,
    streaming_kv_budget,
    streaming_session_limit,
    streaming_sessions_full,
    streaming_turn_refusal,
    streaming_turn_tokens,
)
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_internals
from sglang_mint.sglang.session_history import HISTORY_LIMIT_ATTR, HistoryLimit

logger = logging.getLogger("sglang_mint")

# The attribute of a scheduler's SessionController: the most sessions it keeps open (set by _after_scheduler_init)
MAX_SESSIONS_ATTR = "_mint_max_sessions"
# ... and the most of them streaming, and how many it refused
MAX_STREAMING_ATTR = "_mint_max_streaming_sessions"
REFUSED_ATTR = "_mint_sessions_refused"
# ... the tokens of KV its streaming sessions may hold together, the longest request (the scheduler's
# max_req_len), the turns it refused, and a streaming session's controller
STREAMING_KV_ATTR = "_mint_streaming_kv_budget"
MAX_REQ_LEN_ATTR = "_mint_max_req_len"
TURNS_REFUSED_ATTR = "_mint_streaming_turns_refused"
CONTROLLER_ATTR = "_mint_controller"
# The attribute of a streaming session: the tokens its KV holds after the turn it runs, at most
KV_TOKENS_ATTR = "_mint_kv_tokens"
# The attribute of a Session opened with limits: it is idle only once its requests are done
IDLE_ONLY_WHEN_DONE_ATTR = "_mint_idle_only_when_done"


async def _around_open_session(original, tm, obj, *args, **kwargs):
    """TokenizerManager.open_session AROUND: the session's idle timeout, and a 429 where the scheduler
    refused it (with mint, a session's id is the server's, so a refusal is the limit's)."""
    config = mint_config(tm.server_args)
    if config is None:
        return await original(tm, obj, *args, **kwargs)
    obj.timeout = session_timeout(obj.timeout, config.session_timeout_s)
    opened = await original(tm, obj, *args, **kwargs)
    if opened is None:
        if getattr(obj, "streaming", False):
            raise streaming_sessions_full(config.max_sessions, config.max_streaming_sessions, config.session_timeout_s)
        raise sessions_full(config.max_sessions, config.session_timeout_s)
    return opened


def _after_scheduler_init(result, scheduler, *args, **kwargs):
    """Scheduler.__init__ AFTER: tell the session controller its limits."""
    config = mint_config(scheduler.server_args)
    if config is not None:
        controller = getattr(scheduler, "session_controller", None)
        from sglang.srt.session.session_controller import Session, SessionReqNode

        verify_internals("scheduler", scheduler=scheduler, session_controller=controller,
                         session=Session(capacity_of_str_len=0), session_node=SessionReqNode(req=None))
        setattr(controller, MAX_SESSIONS_ATTR, config.max_sessions)
        streaming = streaming_session_limit(scheduler.max_running_requests, config.max_streaming_sessions)
        if config.max_streaming_sessions is not None and streaming < config.max_streaming_sessions:
            logger.warning("--mint-max-streaming-sessions %d: %d here, so that a request slot of the %d "
                           "(--max-running-requests) is left to other requests", config.max_streaming_sessions,
                           streaming, scheduler.max_running_requests)
        if streaming == 0 and scheduler.server_args.enable_streaming_session:
            logger.warning("--enable-streaming-session with one request slot (--max-running-requests): a streaming "
                           "session would hold it, so none is opened")
        setattr(controller, MAX_STREAMING_ATTR, streaming)
        setattr(controller, STREAMING_KV_ATTR, streaming_kv_budget(scheduler.max_total_num_tokens))
        setattr(controller, MAX_REQ_LEN_ATTR, scheduler.max_req_len)
        setattr(controller, REFUSED_ATTR, 0)
        setattr(controller, TURNS_REFUSED_ATTR, 0)
        setattr(controller, HISTORY_LIMIT_ATTR, HistoryLimit(config.session_history_tokens))
    return result


def _at_limit(controller, recv_req, limit: int) -> str | None:
    """Why ``controller`` cannot open ``recv_req``'s session now (its flag), or None."""
    if len(controller.sessions) >= limit:
        return "--mint-max-sessions"
    if recv_req.streaming:
        streaming = getattr(controller, MAX_STREAMING_ATTR)
        if sum(1 for s in controller.sessions.values() if s.streaming) >= streaming:
            return "--mint-max-streaming-sessions"
    return None


def _around_session_controller_open(original, controller, recv_req, *args, **kwargs):
    """SessionController.open AROUND: at a limit, close the sessions past their timeout; still at it,
    refuse (the tokenizer manager answers 429). A session opened gets the limit on its history."""
    limit = getattr(controller, MAX_SESSIONS_ATTR, None)
    if limit is not None and _at_limit(controller, recv_req, limit):
        controller.maybe_reap(time.monotonic(), interval=0.0)
        flag = _at_limit(controller, recv_req, limit)
        if flag is not None:
            from sglang.srt.managers.io_struct import OpenSessionReqOutput

            setattr(controller, REFUSED_ATTR, getattr(controller, REFUSED_ATTR) + 1)
            logger.warning("a session was refused: as many are open as %s allows", flag)
            return OpenSessionReqOutput(session_id=recv_req.session_id, success=False)
    output = original(controller, recv_req, *args, **kwargs)
    if limit is not None and output.success:
        session = controller.sessions[recv_req.session_id]
        setattr(session, IDLE_ONLY_WHEN_DONE_ATTR, True)
        setattr(session, HISTORY_LIMIT_ATTR, getattr(controller, HISTORY_LIMIT_ATTR))
        if session.streaming:
            setattr(session, CONTROLLER_ATTR, controller)
    return output


def _streaming_kv_tokens(controller, but=None) -> int:
    """The KV the streaming sessions but ``but`` hold: each one's record, or for one running a turn, what it
    may hold after it (a turn aborted gives its record back, and SGLang marks its session not running)."""
    records = controller.tree_cache.session_records()
    held = 0
    for session in controller.sessions.values():
        if session.streaming and session is not but:
            record = records.get(session.session_id)
            held_now = record.kv_allocated_len if record is not None else 0
            held += max(held_now, getattr(session, KV_TOKENS_ATTR, 0)) if session._inflight else held_now
    return held


def _around_session_create_req(original, session, req, *args, **kwargs):
    """Session.create_req AROUND, for a streaming session opened with limits: a turn that would bring the KV
    the streaming sessions hold past their budget is refused (429), as SGLang refuses a turn it cannot run
    (SGLang then detaches it from its session, whose history stays as it was)."""
    new_req = original(session, req, *args, **kwargs)
    controller = getattr(session, CONTROLLER_ATTR, None)
    if controller is None or new_req.to_finish is not None:
        return new_req
    turn_tokens = streaming_turn_tokens(len(new_req.origin_input_ids), new_req.sampling_params.max_new_tokens,
                                        getattr(controller, MAX_REQ_LEN_ATTR))
    refusal = streaming_turn_refusal(turn_tokens, _streaming_kv_tokens(controller, but=session),
                                     getattr(controller, STREAMING_KV_ATTR))
    if refusal is None:
        setattr(session, KV_TOKENS_ATTR, turn_tokens)
    else:
        setattr(controller, TURNS_REFUSED_ATTR, getattr(controller, TURNS_REFUSED_ATTR) + 1)
        new_req.set_finish_with_abort(refusal, 429, "TooManyRequests")
    return new_req


def _around_session_is_timed_out(original, session, *args, **kwargs):
    """Session.is_timed_out AROUND: a session opened with limits whose request is still running is not idle:
    its idle time starts over (the scheduler asks every second)."""
    from sglang.srt.session.session_controller import SessionController

    if getattr(session, IDLE_ONLY_WHEN_DONE_ATTR, False) and (
            session._inflight or not SessionController._all_requests_finished(session)):
        session.last_active_time = time.monotonic()
        return False
    return original(session, *args, **kwargs)


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    """Scheduler.get_internal_state AFTER: the sessions open against their limits, and those refused."""
    controller = getattr(scheduler, "session_controller", None)
    limit = getattr(controller, MAX_SESSIONS_ATTR, None)
    if limit is not None:
        result.internal_state["mint_sessions"] = {
            "open": len(controller.sessions),
            "max_open": limit,
            "streaming_open": sum(1 for s in controller.sessions.values() if s.streaming),
            "max_streaming_open": getattr(controller, MAX_STREAMING_ATTR),
            "refused": getattr(controller, REFUSED_ATTR),
            "streaming_turns_refused": getattr(controller, TURNS_REFUSED_ATTR),
            "streaming_kv_tokens": sum(record.kv_allocated_len
                                       for record in controller.tree_cache.session_records().values()),
            "max_streaming_kv_tokens": getattr(controller, STREAMING_KV_ATTR),
        }
    return result
