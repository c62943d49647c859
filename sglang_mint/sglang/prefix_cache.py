"""No request body can name another adapter's prefix-cache namespace.

SGLang keys its radix cache on ``extra_key + lora_id`` joined as plain strings, and
``extra_key`` comes from the request body: ``extra_key="mint:acme/bot@3"`` without
an adapter would land in acme/bot's namespace. With ``--enable-mint`` every
``extra_key`` is length-prefixed before SGLang joins it, so two different pairs
never give the same key:

    extra_key None,  lora "mint:acme/bot@3"  ->  "0:mint:acme/bot@3"
    extra_key "mint:acme/bot@3", no lora      ->  "15:mint:acme/bot@3"
    extra_key "ab",  lora "mint:c@1"          ->  "2:abmint:c@1"
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config


def namespaced_extra_key(extra_key: str | None) -> str:
    extra_key = extra_key or ""
    return f"{len(extra_key)}:{extra_key}"


def _around_handle_generate_request(original, scheduler, recv_req, *args, **kwargs):
    if mint_config(scheduler.server_args) is not None:
        recv_req.extra_key = namespaced_extra_key(recv_req.extra_key)
    return original(scheduler, recv_req, *args, **kwargs)
