"""/server_info answers every tenant without the server's secrets (sglang/server_info.py): SGLang's own
handler, no server. A real server: tests/sglang/test_durable_later.py
(test_server_info_gives_no_tenant_the_admin_key)."""

import asyncio
from types import SimpleNamespace

import pytest

from sglang_mint.sglang.server_info import REDACTED, _after_build_server_info, redact_command_line


@pytest.mark.parametrize("command, shown", [
    ("--model-path m --api-key K1 --admin-api-key K2 --port 1", f"--model-path m --api-key {REDACTED} "
                                                                 f"--admin-api-key {REDACTED} --port 1"),
    ("--api-key=K1 --ssl-keyfile-password 'p w'", f"--api-key={REDACTED} --ssl-keyfile-password {REDACTED}"),
    ("--mint-catalog postgresql://mint:p%40ss@db:5432/catalog --enable-mint",
     "--mint-catalog postgresql://mint:***@db:5432/catalog --enable-mint"),
    ("--mint-catalog postgresql://mint@db/catalog --my-api-key K", None),  # no password, no secret flag: as is
])
def test_secret_values_leave_the_command_line(command, shown):
    assert redact_command_line(command) == (command if shown is None else shown)


def test_sglang_s_server_info_handler_answers_without_the_keys():
    """SGLang's /server_info handler on the ServerArgs its parser makes of a command line with both keys and
    a catalog URL with a password, through the hook as a server applies it; without --enable-mint, as stock."""
    from sglang.srt.entrypoints import http_server
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path="tiny", api_key="TENANT-KEY", admin_api_key="ADMIN-KEY")
    args._launch_command = "--api-key TENANT-KEY --admin-api-key ADMIN-KEY --mint-catalog postgresql://u:PW@db/c"

    def answer(server_args) -> dict:
        async def get_internal_state():
            return [{}]
        tm = SimpleNamespace(server_args=server_args, startup_time=0.0, get_internal_state=get_internal_state)
        kept, http_server._global_state = http_server._global_state, SimpleNamespace(tokenizer_manager=tm,
                                                                                     scheduler_info={})
        built = http_server.build_server_info
        try:
            http_server.build_server_info = lambda sa, info: _after_build_server_info(built(sa, info), sa, info)
            return asyncio.run(http_server.server_info())
        finally:
            http_server.build_server_info, http_server._global_state = built, kept

    stock = answer(args)
    assert stock["admin_api_key"] == "ADMIN-KEY" and "PW" in stock["launch_command"]  # what every tenant got
    args._mint = object()  # --enable-mint
    info = answer(args)
    assert (info["api_key"], info["admin_api_key"], info["ssl_keyfile_password"]) == (REDACTED, REDACTED, None)
    assert not any(secret in str(info) for secret in ("TENANT-KEY", "ADMIN-KEY", "PW"))
    assert info["model_path"] == "tiny" and info["port"] == args.port  # what a router reads is left
