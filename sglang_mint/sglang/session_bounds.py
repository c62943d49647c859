"""SGLang's sessions within ``--mint-max-sessions`` and ``--mint-session-timeout`` (the rules:
``frontend/session_bounds.py``).

The tokenizer manager gives each new session its idle timeout and turns a scheduler's refusal into a 429;
the scheduler's session controller refuses a session past the limit, after closing those that timed out.
A session is idle only once its requests are done: SGLang counts its timeout from a request's arrival,
so one request that ran longer than the timeout had its session closed under it.
"""

from __future__ import annotations

import logging
import time

from sglang_mint.frontend.session_bounds import session_timeout, sessions_full
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_internals
from sglang_mint.sglang.session_history import HISTORY_LIMIT_ATTR, HistoryLimit

logger = logging.getLogger("sglang_mint")

# The attribute of a scheduler's SessionController: the most sessions it keeps open (set by _after_scheduler_init)
MAX_SESSIONS_ATTR = "_mint_max_sessions"
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
        setattr(controller, HISTORY_LIMIT_ATTR, HistoryLimit(config.session_history_tokens))
    return result


def _around_session_controller_open(original, controller, recv_req, *args, **kwargs):
    """SessionController.open AROUND: at the limit, close the sessions past their timeout; still at it,
    refuse (the tokenizer manager answers 429). A session opened gets the limit on its history."""
    limit = getattr(controller, MAX_SESSIONS_ATTR, None)
    if limit is not None and len(controller.sessions) >= limit:
        controller.maybe_reap(time.monotonic(), interval=0.0)
        if len(controller.sessions) >= limit:
            from sglang.srt.managers.io_struct import OpenSessionReqOutput

            logger.warning("a session was refused: %d are open, the most --mint-max-sessions allows", limit)
            return OpenSessionReqOutput(session_id=recv_req.session_id, success=False)
    output = original(controller, recv_req, *args, **kwargs)
    if limit is not None and output.success:
        session = controller.sessions[recv_req.session_id]
        setattr(session, IDLE_ONLY_WHEN_DONE_ATTR, True)
        setattr(session, HISTORY_LIMIT_ATTR, getattr(controller, HISTORY_LIMIT_ATTR))
    return output


def _around_session_is_timed_out(original, session, *args, **kwargs):
    """Session.is_timed_out AROUND: a session opened with limits whose request is still running is not idle:
    its idle time starts over (the scheduler asks every second)."""
    from sglang.srt.session.session_controller import SessionController

    if getattr(session, IDLE_ONLY_WHEN_DONE_ATTR, False) and (
            session._inflight or not SessionController._all_requests_finished(session)):
        session.last_active_time = time.monotonic()
        return False
    return original(session, *args, **kwargs)
