"""The adapter id in the OpenAI ``model`` field (docs/architecture.md, step 1).

With ``--enable-mint`` this hook answers SGLang's ``OpenAIServingBase._resolve_lora_path``
by ``frontend/catalog_names.py:lora_path_of_model``, with the adapters SGLang loaded
itself (``tm.lora_ref_cache``) as the fallback for ids the catalog does not hold; and an
answer through the gateway names the client's ``model`` (``routing.py:answered_model``).

SGLang 0.5.23's ``/v1/responses`` checks ``model`` against the names it knows, then builds
its request without a LoRA path: an adapter named there would be answered by the base model.
With ``--enable-mint`` it is refused instead (400), pointing to the endpoints that apply it.
"""

from __future__ import annotations

from sglang_mint.frontend.catalog_names import lora_path_of_model
from sglang_mint.gateway.middleware import REQUESTED_MODEL_HEADER
from sglang_mint.routing import answered_model
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.frontend import catalog_frontend


def _around_resolve_lora_path(original, self, request_model, explicit_lora_path):
    tm = self.tokenizer_manager
    if mint_config(tm.server_args) is None:
        return original(self, request_model, explicit_lora_path)
    return lora_path_of_model(request_model, tm.served_model_name, explicit_lora_path, catalog_frontend(tm),
                              tm.lora_ref_cache)


async def _around_handle_request(original, self, request, raw_request):
    requested = raw_request.headers.get(REQUESTED_MODEL_HEADER) if raw_request is not None else None
    if requested is not None and mint_config(self.tokenizer_manager.server_args) is not None:
        request.model = answered_model(request.model, getattr(request, "lora_path", None), requested,
                                       self.tokenizer_manager.served_model_name)
    return await original(self, request, raw_request)


RESPONSES_NO_ADAPTERS = ("model {model!r} names a LoRA adapter, and this server's /v1/responses answers with the "
                         "base model only; use /v1/chat/completions or /v1/completions for adapters")


def _around_validate_responses_model(original, self, model):
    """OpenAIServingResponses._validate_model: a model that is not the base model is refused (400)."""
    tm = self.tokenizer_manager
    if model is None or mint_config(tm.server_args) is None:
        return original(self, model)
    base, adapter = self._parse_model_parameter(model)
    if base == tm.served_model_name and adapter is None:
        return original(self, model)
    return self.create_error_response(message=RESPONSES_NO_ADAPTERS.format(model=model),
                                      err_type="invalid_request_error", status_code=400, param="model")
