"""``--mint-gateway``: the server joins SGLang's gateway (SMG) when it is ready and leaves when it stops.

Runs in the launcher just before ``http_server.launch_server`` serves: it starts the
watcher of ``sglang_mint/gateway/registration.py``, which registers and deregisters it.
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config


def _before_launch_server(server_args, *args, **kwargs):
    config = mint_config(server_args)
    if config is None or config.gateway is None:
        return None
    from sglang_mint.gateway.registration import engine_url, watch_in_background

    watch_in_background(config.gateway, config.advertise_url or engine_url(server_args.host, server_args.port))
    return None
