"""``--mint-gateway``: the server joins SGLang's gateway (SMG) when it is ready and leaves when it stops.

Runs in the launcher process, just before ``http_server.launch_server`` starts
serving: it starts the watcher of ``sglang_mint.gateway.registration``, which
waits for this server's own ``/health``, registers it, and deregisters it once
the launcher has exited (SIGTERM, Ctrl-C, a crash). A ``kill -9`` of the whole
process group ends the watcher too: SMG's health checks drop the engine instead.
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
