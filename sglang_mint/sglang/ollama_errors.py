"""Ollama's routes (``/api/generate``, ``/api/chat``) answer a refused request 400, in Ollama's error shape.

SGLang's Ollama handlers catch nothing: a request refused for its values (SGLang's own checks, and
``frontend/request_values.py``'s: ``options: {"num_predict": 8.5}`` stopped the server before it) was
answered 500, Internal Server Error, naming nothing. With ``--enable-mint`` a ValueError raised before the
answer starts is ``{"error": "<why>"}`` with 400. A streamed request's refusal comes once its stream has
begun, as SGLang sends it.
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config


async def _around_ollama_handler(original, serving, request, raw_request, *args, **kwargs):
    """OllamaServing.handle_generate and handle_chat AROUND."""
    if mint_config(serving.tokenizer_manager.server_args) is None:
        return await original(serving, request, raw_request, *args, **kwargs)
    try:
        return await original(serving, request, raw_request, *args, **kwargs)
    except ValueError as exc:
        from fastapi.responses import ORJSONResponse

        return ORJSONResponse({"error": str(exc)}, status_code=400)
