"""What SGLang's ``/server_info`` tells every caller: without the server's secrets.

``GET /server_info`` (and ``/get_server_info``, the native gRPC ``GetServerInfo``, a follower's
metadata server) answers any caller the API key admits, every tenant, with the resolved launch
settings and the command line as typed (``build_server_info``). SGLang redacts its watermark keys
there and nothing else: the answer carried ``admin_api_key`` and ``api_key`` in clear, and the
command line repeated them, so every tenant held the admin key (``/mint/*``, ``/load_lora_adapter``,
weight updates). With ``--enable-mint`` the answer carries ``"<redacted>"`` for each secret setting
that is set (``SECRET_FIELDS``), and its command line ``<redacted>`` after each secret flag and
``***`` for a password in a URL (``--mint-catalog postgresql://mint:***@db/catalog``); everything a
router reads from it (the model, the ports, the parallelism) is left as it was.
"""

from __future__ import annotations

import re

from sglang_mint.sglang.flags import mint_config

REDACTED = "<redacted>"
# ServerArgs fields that are secrets (the watermark's SGLang redacts itself)
SECRET_FIELDS = ("api_key", "admin_api_key", "ssl_keyfile_password")
SECRET_FLAGS = tuple("--" + name.replace("_", "-") for name in SECRET_FIELDS)
_FLAG_VALUE = re.compile(r"(?P<flag>(?:^|(?<=\s))(?:%s))(?P<sep>=|\s+)(?P<value>'[^']*'|\"[^\"]*\"|\S+)"
                         % "|".join(re.escape(flag) for flag in SECRET_FLAGS))
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/@]*@")


def redact_command_line(command: str) -> str:
    """``command`` with the value of each secret flag replaced (``--api-key K``, ``--api-key=K``) and each
    URL's password (``postgresql://mint:pw@db/c`` -> ``postgresql://mint:***@db/c``)."""
    command = _FLAG_VALUE.sub(lambda m: f"{m['flag']}{m['sep']}{REDACTED}", command)
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}***@", command)


def _after_build_server_info(info, server_args, *args, **kwargs):
    """build_server_info AFTER: the secrets out of the answer every caller gets."""
    if mint_config(server_args) is None or not isinstance(info, dict):
        return info
    for name in SECRET_FIELDS:
        if info.get(name) is not None:
            info[name] = REDACTED
    if isinstance(info.get("launch_command"), str):
        info["launch_command"] = redact_command_line(info["launch_command"])
    return info
