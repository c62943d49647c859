"""How many SGLang sessions a scheduler keeps open, and how long one is kept idle: bounded with ``--enable-mint``.

SGLang opens a session (``/open_session``) for any caller the API key admits and keeps it until its
client closes it, or, with a ``timeout`` in the body, until it has been idle that long. A
non-streaming session keeps each of its requests (their token arrays) as a node of its history; a
streaming one keeps its last request's KV cache in the radix tree. A client that opened sessions and
never closed them grew the scheduler's memory, and with streaming sessions held KV cache that other
tenants' requests need, without bound. With ``--enable-mint``:

- every session has an idle timeout: one opened without a timeout gets ``--mint-session-timeout``,
  and one asking for longer is refused (400);
- a scheduler keeps at most ``--mint-max-sessions`` open: once the sessions past their timeout are
  closed, one more is refused (429) until a session is closed or times out.
"""

from __future__ import annotations

import math


class SessionsFull(Exception):
    """``/open_session`` on a scheduler that keeps its most sessions open: SGLang answers ``status_code``."""

    status_code = 429


def session_timeout(requested, limit_s: float) -> float:
    """The idle timeout a new session gets: ``limit_s`` if its body asked for none, its own if at most that;
    a ValueError (400) naming the limit otherwise."""
    if requested is None:
        return limit_s
    if isinstance(requested, bool) or not isinstance(requested, (int, float)) or not math.isfinite(requested) \
            or not 0 < requested <= limit_s:
        raise ValueError(f"timeout: a session is kept idle at most {limit_s:g} s on this server "
                         f"(--mint-session-timeout), above 0; got {requested!r}. Leave it out to get {limit_s:g} s")
    return float(requested)


def sessions_full(max_sessions: int, timeout_s: float) -> SessionsFull:
    return SessionsFull(f"this server keeps at most {max_sessions} sessions open (--mint-max-sessions), and that "
                        "many are: close one you opened (/close_session), or retry once an idle one has been closed "
                        f"(after {timeout_s:g} s idle)")
