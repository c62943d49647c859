"""No request body can name another adapter's prefix-cache namespace.

SGLang keys its radix cache on ``extra_key + lora_id``, joined as plain
strings (``Req.__init__``), and ``extra_key`` comes from the request body. So
a base-model request with ``extra_key="mint:acme/bot@3"`` lands in the
namespace of adapter acme/bot's requests, and one with ``extra_key="x"`` for
adapter ``y`` shares ``"xmint:y@1"`` with whoever can choose ``extra_key``
so. With ``--enable-mint`` the scheduler length-prefixes every request's
``extra_key`` before SGLang joins it:

    extra_key None,  lora "mint:acme/bot@3"  ->  "0:mint:acme/bot@3"
    extra_key "mint:acme/bot@3", no lora      ->  "15:mint:acme/bot@3"
    extra_key "ab",  lora "mint:c@1"          ->  "2:abmint:c@1"

The length says where the caller's part ends, so two different
(extra_key, lora_id) pairs never give the same key, and requests that agree
on both still share their prefixes as before.
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config

SCHEDULER = "sglang.srt.managers.scheduler.Scheduler"


def namespaced_extra_key(extra_key: str | None) -> str:
    extra_key = extra_key or ""
    return f"{len(extra_key)}:{extra_key}"


def _around_handle_generate_request(original, scheduler, recv_req, *args, **kwargs):
    if mint_config(scheduler.server_args) is not None:
        recv_req.extra_key = namespaced_extra_key(recv_req.extra_key)
    return original(scheduler, recv_req, *args, **kwargs)
