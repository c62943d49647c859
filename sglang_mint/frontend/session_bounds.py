"""SGLang's sessions with ``--enable-mint``: how many a scheduler keeps open, how long one is kept idle, how
much of its history one keeps, and the ``session_params`` a request may write.

SGLang opens a session (``/open_session``) for any caller the API key admits and keeps it until its
client closes it, or, with a ``timeout`` in the body, until it has been idle that long. A
non-streaming session keeps each of its requests (their token arrays) as a node of its history; a
streaming one keeps its last request's KV cache in the radix tree. A client that opened sessions and
never closed them grew the scheduler's memory, and with streaming sessions held KV cache that other
tenants' requests need, without bound. With ``--enable-mint``:

- every session has an idle timeout: one opened without a timeout gets ``--mint-session-timeout``,
  and one asking for longer is refused (400);
- a scheduler keeps at most ``--mint-max-sessions`` open: once the sessions past their timeout are
  closed, one more is refused (429) until a session is closed or times out;
- of them, at most ``streaming_session_limit`` streaming: each holds one of the scheduler's request slots
  (rows of its request-to-token table, as many as ``--max-running-requests``) from its first request until
  it closes. Sessions holding every slot left the scheduler no room for any other request: it served
  nobody until one closed;
- and the streaming sessions hold at most half the scheduler's KV cache (``streaming_kv_budget``): each
  keeps its tokens' KV, every turn's input and output, until it closes, so a few long ones filled the KV
  cache as well (``streaming_turn_refusal``);
- a non-streaming session keeps about ``--mint-session-history-tokens`` tokens of its requests to continue
  from (``history_to_forget``), forgetting the least recently used first: SGLang kept every request of
  one for as long as it was open, so a single session grew the scheduler without bound;
- a request's ``session_params`` are the types SGLang's scheduler reads (``check_session_params``): a
  list for ``rid``, a string for ``offset`` or an offset past 64 bits raised in the scheduler, and the
  whole server stopped.
"""

from __future__ import annotations

import math
from typing import Hashable, Sequence

# session_params: each field SGLang reads, and the type it takes (None leaves it out)
SESSION_PARAM_TYPES = {"id": str, "rid": str, "offset": int, "replace": bool, "drop_previous_output": bool}
LARGEST_OFFSET = 2**31 - 1  # a token position; SGLang's messages carry 64-bit integers at most
# What a kept request weighs beside its tokens, in tokens: about 3.5 KB of its own on CPU, beside some
# 21 bytes a token (its token arrays), measured with SGLang 0.5.23
KEPT_REQUEST_OVERHEAD_TOKENS = 256


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


def streaming_session_limit(request_slots: int, configured: int | None) -> int:
    """The most streaming sessions a scheduler with ``request_slots`` (its max running requests) keeps open:
    ``configured`` (--mint-max-streaming-sessions) or a quarter of the slots, at least 1, and never every slot
    (0 where there is one)."""
    wanted = max(request_slots // 4, 1) if configured is None else configured
    return max(0, min(wanted, request_slots - 1))


def streaming_kv_budget(kv_tokens: int) -> int:
    """The tokens of a scheduler's KV cache (``kv_tokens``, its max total tokens) its streaming sessions may
    hold together: half."""
    return kv_tokens // 2


def streaming_turn_tokens(input_tokens: int, max_new_tokens: int | None, max_req_len: int) -> int:
    """The tokens a streaming session's KV may hold after a turn of ``input_tokens`` (its whole context so far
    and the new input): with its new tokens as SGLang caps them, to the longest request (``max_req_len``) less
    one; all of that where the request asked for no limit."""
    room = max(max_req_len - input_tokens - 1, 0)
    return input_tokens + (room if max_new_tokens is None else min(max_new_tokens, room))


def streaming_turn_refusal(turn_tokens: int, others_tokens: int, budget: int) -> str | None:
    """Why a streaming session's turn, after which its KV holds at most ``turn_tokens``, is refused where the
    other streaming sessions hold ``others_tokens`` of ``budget``; None where it fits."""
    if others_tokens + turn_tokens <= budget:
        return None
    return (f"the streaming sessions of this server hold at most {budget} tokens of KV cache together (half of "
            f"it), and this request would bring them to {others_tokens + turn_tokens} (this session's "
            f"{turn_tokens}, counting max_new_tokens): close a streaming session (/close_session), or open a new "
            "one for a fresh context")


def streaming_sessions_full(max_sessions: int, configured: int | None, timeout_s: float) -> SessionsFull:
    streaming = "a quarter of a scheduler's request slots" if configured is None else str(configured)
    return SessionsFull(f"this server keeps at most {max_sessions} sessions open (--mint-max-sessions), of them at "
                        f"most {streaming} streaming and never every request slot (--mint-max-streaming-sessions; "
                        "/server_info's mint_sessions gives each scheduler's): each holds a request slot until it "
                        "is closed. As many are open as the scheduler allows: close one you opened "
                        f"(/close_session), or retry once an idle one has been closed (after {timeout_s:g} s idle)")


def sessions_full(max_sessions: int, timeout_s: float) -> SessionsFull:
    return SessionsFull(f"this server keeps at most {max_sessions} sessions open (--mint-max-sessions), and that "
                        "many are: close one you opened (/close_session), or retry once an idle one has been closed "
                        f"(after {timeout_s:g} s idle)")


def check_session_params(params) -> None:
    """A ValueError (400) naming the field where ``params``, a request's ``session_params``, is not what
    SGLang's scheduler reads: an object of ``SESSION_PARAM_TYPES``, each field of its type or null, an
    ``offset`` within +-``LARGEST_OFFSET``."""
    if params is None:
        return
    if not isinstance(params, dict):
        raise ValueError(f"session_params: an object such as {{\"id\": \"<session id>\"}}, got {type(params).__name__}")
    for name, value in params.items():
        kind = SESSION_PARAM_TYPES.get(name)
        if kind is None:
            raise ValueError(f"session_params.{name}: no such field; the fields are " + ", ".join(SESSION_PARAM_TYPES))
        if value is None:
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            what = {str: "a string", int: "an integer", bool: "true or false"}[kind]
            raise ValueError(f"session_params.{name}: {what} (or null), got {_json_type(value)}")
        if kind is int and abs(value) > LARGEST_OFFSET:
            raise ValueError(f"session_params.{name}: a token position, at most {LARGEST_OFFSET} either way, "
                             f"got {value}")


def _json_type(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "an object"}.get(type(value), type(value).__name__)


def history_to_forget(kept: Sequence[tuple[Hashable, int, bool]], budget_tokens: int) -> list[Hashable]:
    """The requests a session forgets to keep about ``budget_tokens``: ``kept`` is (key, tokens, finished)
    for each request it keeps, least recently used first. The least recently used finished ones go first;
    the last (the newest) and any still running are kept, even past the budget."""
    total = sum(tokens for _, tokens, _ in kept)
    forget = []
    for key, tokens, finished in kept[:-1]:
        if total <= budget_tokens:
            break
        if finished:
            forget.append(key)
            total -= tokens
    return forget


def unknown_session_rid(rid: str, budget_tokens: int) -> str:
    """The message for a request that continues from (or replaces) a rid its session does not hold."""
    return (f"session_params.rid {rid!r}: no request of this session has that rid, or the session forgot it: "
            f"a session keeps about {budget_tokens} tokens of its requests (--mint-session-history-tokens), "
            "forgetting the least recently used first. Continue from a recent request, or send the whole "
            "conversation without a rid")
