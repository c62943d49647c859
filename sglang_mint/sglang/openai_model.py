"""The adapter id in the OpenAI ``model`` field.

SGLang's OpenAI handlers (completions, chat, embeddings) turn ``model`` into a
LoRA name through ``OpenAIServingBase._resolve_lora_path``; stock SGLang treats
a bare name as the base model. With ``--enable-mint`` this hook answers
instead: the served name is the base model, ``<served>:<id>`` and the bare
``<id>`` select adapter ``id``, a malformed id is a 400 and an id the server
does not know is a 404, both naming the id. An id is looked up in
``--mint-catalog`` first: the catalog is the authority for the ids it holds
(frontend.py); an id it does not hold may name an adapter from ``--lora-paths``
or ``/load_lora_adapter``.
"""

from __future__ import annotations

from fastapi import HTTPException

from sglang_mint.errors import AdapterNotFound, MintError
from sglang_mint.routing import adapter_from_model
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.frontend import catalog_frontend

def _around_resolve_lora_path(original, self, request_model, explicit_lora_path):
    tm = self.tokenizer_manager
    if mint_config(tm.server_args) is None:
        return original(self, request_model, explicit_lora_path)
    try:
        adapter_id = adapter_from_model(request_model, tm.served_model_name)
        if adapter_id is None:
            return explicit_lora_path
        frontend = catalog_frontend(tm)
        if frontend is not None:
            # the catalog's revision name; None: not in the catalog but in tm.lora_ref_cache
            return frontend.checked_name(adapter_id, tm.lora_ref_cache) or adapter_id
        if adapter_id in tm.lora_ref_cache:  # an adapter from --lora-paths or /load_lora_adapter
            return adapter_id
        raise AdapterNotFound(f"adapter {adapter_id!r} not found: no adapter with this id is known to the server")
    except MintError as exc:
        raise HTTPException(status_code=exc.http_status, detail=str(exc)) from None
