"""SGLang's stored ``/v1/responses`` answers within ``--mint-max-stored-responses`` and
``--mint-stored-responses-bytes``, and its background ones within ``--mint-max-background-responses`` (the
store: ``frontend/response_store.py``)."""

from __future__ import annotations

from sglang_mint.frontend.response_store import (
    AnswerStore,
    BackgroundFull,
    RunningAnswers,
    limited_stores,
    metadata_problem,
)
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_internals


def _after_serving_responses_init(result, serving, *args, **kwargs):
    """OpenAIServingResponses.__init__ AFTER: its answers, conversations and background tasks become limited
    stores."""
    config = mint_config(serving.tokenizer_manager.server_args)
    if config is not None:
        verify_internals("frontend", openai_serving_responses=serving)
        stores = limited_stores(config.max_stored_responses, config.stored_responses_bytes,
                                config.max_background_responses)
        serving.response_store, serving.msg_store = stores.answers, stores.conversations
        serving.background_tasks = stores.running  # its tasks' ends: an answer made is counted then
    return result


def _around_response_input_history(original, serving, request, *args, **kwargs):
    """OpenAIServingResponses._response_input_history AROUND: a request continuing an answer reads it as it
    did the first time, the answer since evicted or not."""
    history_of = getattr(serving.msg_store, "history_of", None)
    if history_of is None or request.previous_response_id is None:
        return original(serving, request, *args, **kwargs)
    try:
        return history_of(request, lambda: original(serving, request, *args, **kwargs))
    except KeyError:  # the answer is kept and its conversation not: being made, or too heavy to keep (a 400)
        raise ValueError(f"previous_response_id {request.previous_response_id!r}: that answer cannot be continued "
                         "yet (a background answer still being made) or at all (its conversation weighed more "
                         "than --mint-stored-responses-bytes)") from None


async def _around_create_responses(original, serving, request, *args, **kwargs):
    """OpenAIServingResponses.create_responses AROUND: a request to be stored whose ``metadata`` is past OpenAI's
    bounds is refused (400): SGLang keeps it with the answer as it came. A background one past the background
    answers in flight is refused (429), and is otherwise counted among them until SGLang has started its task."""
    from sglang.srt.runtime_context import get_serving

    if not (isinstance(serving.response_store, AnswerStore) and request.store
            and get_serving().enable_response_store):
        return await original(serving, request, *args, **kwargs)
    problem = metadata_problem(request.metadata)
    if problem is not None:
        return serving.create_error_response(problem, param="metadata")
    running = serving.background_tasks
    if not (request.background and not request.stream and isinstance(running, RunningAnswers)):
        return await original(serving, request, *args, **kwargs)  # streamed: it holds its connection
    try:
        admitted = running.admit()
    except BackgroundFull as full:
        refusal = serving.create_error_response(str(full), err_type="TooManyRequests", status_code=429)
        refusal.headers["Retry-After"] = "1"
        return refusal
    with admitted:
        return await original(serving, request, *args, **kwargs)
