"""A non-streaming SGLang session's history with ``--enable-mint``: whole, and within
``--mint-session-history-tokens`` (the rules: ``frontend/session_bounds.py``).

SGLang's scheduler keeps each request of a non-streaming session as a node of a tree
(``Session.req_nodes``, keyed by rid), so that a later request can continue from any earlier one
(``session_params.rid``) or replace it and what followed it (``replace``). Three things a client did
with it:

- ``replace: true`` without a rid, in a session holding a request: SGLang deletes from ``req_nodes``
  while it iterates it, the scheduler raises, and **the whole server stops**;
- a rid sent again in its session (allowed once the first request is done): the new node takes the old
  one's key while the old one stays in the tree, and a later replace above both deletes the key twice:
  the same stop;
- request after request: each one is kept, its token arrays with it, while the session is open; one
  session grew the scheduler's memory without bound.

Here a replace clears the tree itself, node by node, before SGLang's code runs (which then finds nothing
left to clear); a node whose rid is sent again leaves the tree; and once a session keeps more than its
budget, its least recently used finished requests are forgotten (taken out of the tree, their children
handed to their parent). Continuing from a forgotten rid, or from one the session never had, is a 400
naming the budget. A forgotten request's multimodal inputs are left to the garbage collector: SGLang
releases those of the requests a session still holds when it closes.
"""

from __future__ import annotations

from dataclasses import dataclass

from sglang_mint.frontend.session_bounds import KEPT_REQUEST_OVERHEAD_TOKENS, history_to_forget, unknown_session_rid

# The attribute of a scheduler's SessionController and of each session it opens: its HistoryLimit
HISTORY_LIMIT_ATTR = "_mint_history_limit"
# The attribute of a session: the tokens it kept once its last request was added (for /server_info)
KEPT_TOKENS_ATTR = "_mint_kept_tokens"


@dataclass
class HistoryLimit:
    """What each non-streaming session of one scheduler keeps of its requests, and how many they forgot."""

    tokens: int
    forgotten: int = 0


def kept_tokens(node) -> int:
    """What one kept request weighs, in tokens: its input, its output so far, and its own memory."""
    return len(node.req.origin_input_ids) + len(node.req.output_ids) + KEPT_REQUEST_OVERHEAD_TOKENS


def _around_session_create_req(original, session, req, *args, **kwargs):
    """Session.create_req AROUND, for a session opened with limits that does not stream."""
    limit: HistoryLimit | None = getattr(session, HISTORY_LIMIT_ATTR, None)
    if limit is None or session.streaming:
        return original(session, req, *args, **kwargs)
    nodes, params = session.req_nodes, req.session_params
    if params.replace and params.rid is None and len(req.input_ids) == 0:
        # SGLang refuses it (no tokens once the history is gone); its loop over the history must not run
        kept = dict(nodes)
        nodes.clear()
        try:
            return original(session, req, *args, **kwargs)
        finally:
            nodes.update(kept)
    if params.replace and params.rid is None:
        for node in list(nodes.values()):
            _clear(nodes, node)
    elif params.replace and params.rid in nodes:
        parent = nodes[params.rid]
        for child in parent.children:
            _clear(nodes, child)
        parent.children = []
    unknown_rid = params.rid is not None and params.rid not in nodes
    earlier = nodes.get(req.rid)

    new_req = original(session, req, *args, **kwargs)

    node = nodes.get(req.rid)
    if node is None or node.req is not new_req:  # refused: no node was added
        if unknown_rid:  # SGLang's message, "Invalid request session id", made to say why
            from sglang.srt.managers.schedule_batch import FINISH_ABORT

            new_req.to_finish = FINISH_ABORT(unknown_session_rid(params.rid, limit.tokens), 400, "BadRequestError")
        return new_req
    if earlier is not None:
        _leave_tree(earlier)
    if params.rid is not None and params.rid != req.rid:
        nodes[params.rid] = nodes.pop(params.rid)  # used now: the dict's order is the order of use
    nodes[req.rid] = nodes.pop(req.rid)
    kept = [(rid, kept_tokens(n), n.req.finished()) for rid, n in nodes.items()]
    forgotten = set(history_to_forget(kept, limit.tokens))
    for rid in forgotten:
        _leave_tree(nodes.pop(rid))
    limit.forgotten += len(forgotten)
    setattr(session, KEPT_TOKENS_ATTR, sum(tokens for rid, tokens, _ in kept if rid not in forgotten))
    return new_req


def _clear(nodes: dict, node) -> None:
    """``node`` and those under it out of ``nodes``, a request still running aborted (SGLang's
    SessionReqNode.clear, without deleting a key twice or a key another node holds)."""
    stack = [node]
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        node.abort()
        if nodes.get(node.req.rid) is node:
            del nodes[node.req.rid]


def _leave_tree(node) -> None:
    """``node`` out of its session's tree, its children handed to its parent."""
    parent = node.parent
    if parent is not None:
        parent.children = [child for child in parent.children if child is not node]
    for child in node.children:
        child.parent = parent
        if parent is not None:
            parent.children.append(child)
    node.parent, node.children = None, []


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    """Scheduler.get_internal_state AFTER: what the non-streaming sessions keep of their requests (their
    tokens as of each one's last request: one pass over the sessions, none over their requests)."""
    controller = getattr(scheduler, "session_controller", None)
    limit: HistoryLimit | None = getattr(controller, HISTORY_LIMIT_ATTR, None)
    if limit is not None:
        sessions = [s for s in controller.sessions.values() if not s.streaming]
        result.internal_state["mint_session_history"] = {
            "tokens_per_session": limit.tokens,
            "sessions": len(sessions),
            "requests_kept": sum(len(s.req_nodes) for s in sessions),
            "tokens_kept": sum(getattr(s, KEPT_TOKENS_ATTR, 0) for s in sessions),
            "requests_forgotten": limit.forgotten,
        }
    return result
