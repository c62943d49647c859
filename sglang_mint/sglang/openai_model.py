"""The adapter id in the OpenAI ``model`` field.

SGLang's OpenAI handlers (completions, chat, embeddings) turn ``model`` into a
LoRA name through ``OpenAIServingBase._resolve_lora_path``; stock SGLang treats
a bare name as the base model. With ``--enable-mint`` this hook answers
instead: the served name is the base model, ``<served>:<id>`` and the bare
``<id>`` select adapter ``id``, a malformed id is a 400 and an id the server
does not know is a 404, both naming the id. Ids from ``--lora-paths`` are
served as they are; others are looked up in ``--mint-catalog``.
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
        if adapter_id in tm.lora_ref_cache:  # an adapter from --lora-paths or /load_lora_adapter
            return adapter_id
        frontend = catalog_frontend(tm)
        if frontend is None:
            raise AdapterNotFound(f"adapter {adapter_id!r} not found: no adapter with this id is known to the server")
        return frontend.lora_name(adapter_id)  # AdapterNotFound if not in the catalog
    except MintError as exc:
        raise HTTPException(status_code=exc.http_status, detail=str(exc)) from None
