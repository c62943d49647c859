"""Ids that open what SGLang keeps for a client: with ``--enable-mint`` only the server makes them.

SGLang keeps two things for a client and hands them to whoever names their id, with no other check:

- a stored ``/v1/responses`` answer (``--enable-response-store``): ``GET /v1/responses/{id}`` reads it,
  ``previous_response_id`` continues its conversation, ``/cancel`` cancels it, and a new request with the
  same id stores over it;
- a session (``/open_session``): a ``/generate`` with ``session_params: {"id": ...}`` runs on its context,
  the KV cache the session's requests computed under their adapter, and ``/close_session`` ends it.

Both take their id from the client when its body writes one. A tenant that stored an answer as
"resp_job-1", or opened the session "chat-1", had it read by another tenant who guessed the id: the
other's request ran on the first's context and cache (20 of its 22 prompt tokens cached). With
``--enable-mint`` such a body is refused (400 naming the field), so the ids are the server's own,
``resp_`` and a uuid4().hex, and a uuid4().hex: they open nothing for a tenant that was not given them.
A ``/v1/responses`` request that is not stored (``store: false``) keeps the id its client wrote.
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config

STORED_RESPONSE_ID = ("request_id: this server stores /v1/responses answers (--enable-response-store), and a stored "
                      "answer is read (GET /v1/responses/{id}), continued (previous_response_id) and cancelled by its "
                      "id alone, so the server makes the id; leave request_id out, or send store: false")
SESSION_ID = ("session_id: a session is continued and closed by its id alone, so the server makes the id (the "
              "answer to /open_session); leave session_id out")


async def _around_create_responses(original, serving, request, *args, **kwargs):
    """OpenAIServingResponses.create_responses AROUND: a request to be stored whose body wrote its
    ``request_id`` is refused (400)."""
    from sglang.srt.runtime_context import get_serving

    if (mint_config(serving.tokenizer_manager.server_args) is not None and request.store
            and "request_id" in request.model_fields_set and get_serving().enable_response_store):
        return serving.create_error_response(STORED_RESPONSE_ID, param="request_id")
    return await original(serving, request, *args, **kwargs)


async def _around_open_session(original, tm, obj, *args, **kwargs):
    """TokenizerManager.open_session AROUND: a session whose id its body wrote is refused (a ValueError:
    SGLang's /open_session answers 400 with its message)."""
    if obj.session_id is not None and mint_config(tm.server_args) is not None:
        raise ValueError(SESSION_ID)
    return await original(tm, obj, *args, **kwargs)
