"""What SGLang's ``/server_info`` tells every caller: without the server's secrets.

``GET /server_info`` (and ``/get_server_info``, the native gRPC ``GetServerInfo``, a follower's
metadata server) answers any caller the API key admits, every tenant, with the resolved launch
settings, the command line as typed (``build_server_info``) and each scheduler's settings again
(``internal_states``, ``Scheduler.get_internal_state``). SGLang redacts its watermark keys there and
nothing else: the answer carried ``admin_api_key`` and ``api_key`` in clear, in all three places, so
every tenant held the admin key (``/mint/*``, ``/load_lora_adapter``, weight updates). With
``--enable-mint`` each secret setting that is set (``SECRET_FIELDS``) reads ``"<redacted>"``, its value
is ``<redacted>`` wherever else it appears (the command line: ``--api-key K``, ``--api-key=K``,
argparse's ``--admin-api K``), and so is every URL's password (``postgresql://mint:<redacted>@db/c``,
``?password=<redacted>``); everything a router reads from it (the model, the ports, the parallelism)
is left as it was.
"""

from __future__ import annotations

import re

from sglang_mint.sglang.flags import mint_config

REDACTED = "<redacted>"
# ServerArgs fields that are secrets (the watermark's SGLang redacts itself)
SECRET_FIELDS = ("api_key", "admin_api_key", "ssl_keyfile_password")
# user:password@ in a URL (the password up to the host's @, which may follow @s of its own), and ?password=
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s/:@]*:)[^\s/]*@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&](?:password|passwd|pwd)=)[^&\s]*", re.IGNORECASE)
SHORTEST_SECRET_REPLACED_ANYWHERE = 6  # a shorter one is replaced where it is a whole word: "K" stays in "Kimi"


def redact_text(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with each of ``secrets`` and each URL's password replaced by ``<redacted>``."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= SHORTEST_SECRET_REPLACED_ANYWHERE:
            text = text.replace(secret, REDACTED)
        else:
            text = re.sub(rf"(?<![^\s=]){re.escape(secret)}(?!\S)", REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{REDACTED}", text)


def secrets_of(server_args) -> tuple[str, ...]:
    return tuple(value for value in (getattr(server_args, name) for name in SECRET_FIELDS) if value)


def redact_settings(settings, secrets: tuple[str, ...]):
    """A copy of ``settings`` (dicts, lists and strings, as JSON holds them) without the secrets."""
    if isinstance(settings, dict):
        return {key: (REDACTED if key in SECRET_FIELDS and value is not None else redact_settings(value, secrets))
                for key, value in settings.items()}
    if isinstance(settings, (list, tuple)):
        return type(settings)(redact_settings(value, secrets) for value in settings)
    return redact_text(settings, secrets) if isinstance(settings, str) else settings


def _after_build_server_info(info, server_args, *args, **kwargs):
    """build_server_info AFTER: the settings and the command line /server_info gives every caller."""
    if mint_config(server_args) is None or not isinstance(info, dict):
        return info
    return redact_settings(info, secrets_of(server_args))


def _after_scheduler_get_internal_state(result, scheduler, *args, **kwargs):
    """Scheduler.get_internal_state AFTER: each scheduler's settings, which /server_info adds as
    ``internal_states``."""
    if mint_config(scheduler.server_args) is not None:
        result.internal_state = redact_settings(result.internal_state, secrets_of(scheduler.server_args))
    return result
