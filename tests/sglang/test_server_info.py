"""/server_info answers every tenant without the server's secrets (sglang/server_info.py): SGLang's own
handler, no server. A real server: tests/sglang/test_durable_later.py
(test_server_info_gives_no_tenant_the_admin_key)."""

import asyncio
import collections
import json
from types import SimpleNamespace

import pytest

from sglang_mint.sglang.server_info import (REDACTED, _after_build_server_info, _after_scheduler_get_internal_state,
                                            redact_command_line, redact_settings)

SECRETS = ("TENANT-KEY-1", "ADMIN-KEY-2", "p w", "K")


# SGLang's launch_command is " ".join(argv): no quoting
@pytest.mark.parametrize("command, shown", [
    ("--model-path m --api-key TENANT-KEY-1 --admin-api-key ADMIN-KEY-2 --port 1",
     f"--model-path m --api-key {REDACTED} --admin-api-key {REDACTED} --port 1"),
    ("--api-key=TENANT-KEY-1 --ssl-keyfile-password p w --admin-api K",  # argparse takes the shortened flag
     f"--api-key={REDACTED} --ssl-keyfile-password {REDACTED} --admin-api {REDACTED}"),
    ("--model-path /models/Kimi-K2 --api-key K", f"--model-path /models/Kimi-K2 --api-key {REDACTED}"),
    ("--mint-catalog postgresql://mint:p@ss@db:5432/catalog --enable-mint",  # the password has an @
     f"--mint-catalog postgresql://{REDACTED}@db:5432/catalog --enable-mint"),
    ("--mint-catalog postgresql://mint:p%40ss@[::1]:5432/c", f"--mint-catalog postgresql://{REDACTED}@[::1]:5432/c"),
    ("--otlp-traces-endpoint http://db/c?user=a&password=pw&x=1",
     f"--otlp-traces-endpoint http://db/c?user=a&password={REDACTED}&x=1"),
    ("--model-path https://ghp_TOKEN@github.com/m", f"--model-path https://{REDACTED}@github.com/m"),
    ("--hicache-storage-backend-extra-config {\"access_key\":\"AK\",\"secret_key\":\"SK\",\"endpoint\":\"e\"}",
     f"--hicache-storage-backend-extra-config {{\"access_key\":\"{REDACTED}\",\"secret_key\":\"{REDACTED}\","
     f"\"endpoint\":\"e\"}}"),
    ("--mint-catalog postgresql://db/catalog --my-flag Kx --port 8000", None),  # no secret: as is
])
def test_secret_values_leave_the_command_line(command, shown):
    assert redact_command_line(command, SECRETS) == (command if shown is None else shown)


def test_a_setting_that_holds_one_value_is_never_rewritten_for_a_secret_in_it():
    """A key that happens to be "tiny" leaves the model named: SMG reads model_path and served_model_name."""
    settings = {"model_path": "tiny", "served_model_name": "tiny", "api_key": "tiny", "ssl_keyfile_password": None,
                "bucket_time_to_first_token": [0.1], "dp_size": (1, 2),
                "hicache_storage_backend_extra_config": '{"secret_key": "SK", "bucket": "b"}'}
    assert redact_settings(settings, ("tiny",)) == {**settings, "api_key": REDACTED,
                                                   "hicache_storage_backend_extra_config":
                                                       f'{{"secret_key": "{REDACTED}", "bucket": "b"}}'}
    Pair = collections.namedtuple("Pair", "a b")
    assert redact_settings({"x": Pair("redis://u:pw@h/m", 2)}) == {"x": Pair(f"redis://{REDACTED}@h/m", 2)}


def test_sglang_s_server_info_handler_answers_without_the_keys():
    """SGLang's /server_info handler on ServerArgs with both keys and a catalog URL with a password, its
    schedulers' internal states as SGLang makes them (the resolved settings), through the hooks as a server
    applies them; without --enable-mint, as stock."""
    from sglang.srt.entrypoints import http_server
    from sglang.srt.managers.io_struct import GetInternalStateReqOutput
    from sglang.srt.server_args import ServerArgs

    args = ServerArgs(model_path="tiny", api_key="TENANT-KEY", admin_api_key="ADMIN-KEY")
    args._launch_command = "--api-key TENANT-KEY --admin-api-key ADMIN-KEY --mint-catalog postgresql://u:PW@db/c"

    def answer(server_args) -> dict:
        async def get_internal_state():  # a scheduler's answer, through the scheduler's hook
            state = GetInternalStateReqOutput(internal_state=server_args.resolved_dict())
            state = _after_scheduler_get_internal_state(state, SimpleNamespace(server_args=server_args))
            return [state.internal_state]
        tm = SimpleNamespace(server_args=server_args, startup_time=0.0, get_internal_state=get_internal_state)
        kept, http_server._global_state = http_server._global_state, SimpleNamespace(tokenizer_manager=tm,
                                                                                     scheduler_info={})
        built = http_server.build_server_info
        try:
            http_server.build_server_info = lambda sa, info: _after_build_server_info(built(sa, info), sa, info)
            return asyncio.run(http_server.server_info())
        finally:
            http_server.build_server_info, http_server._global_state = built, kept

    stock = json.dumps(answer(args), default=str)
    assert all(secret in stock for secret in ("TENANT-KEY", "ADMIN-KEY", "PW"))  # what every tenant got
    args._mint = object()  # --enable-mint
    info = answer(args)
    assert (info["api_key"], info["admin_api_key"], info["ssl_keyfile_password"]) == (REDACTED, REDACTED, None)
    assert info["internal_states"][0]["admin_api_key"] == REDACTED
    assert not any(secret in json.dumps(info, default=str) for secret in ("TENANT-KEY", "ADMIN-KEY", "PW"))
    assert info["model_path"] == "tiny" and info["port"] == args.port  # what a router reads is left
