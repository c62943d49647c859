"""What SGLang's ``/server_info`` tells every caller: without the server's secrets.

``GET /server_info`` (and ``/get_server_info``, the native gRPC ``GetServerInfo``, a follower's
metadata server) answers any caller the API key admits, every tenant, with the resolved launch
settings, the command line as typed (``build_server_info``) and each scheduler's settings again
(``internal_states``, ``Scheduler.get_internal_state``). SGLang redacts its watermark keys there and
nothing else: the answer carried ``admin_api_key`` and ``api_key`` in clear, in all three places, so
every tenant held the admin key (``/mint/*``, ``/load_lora_adapter``, weight updates). With
``--enable-mint`` the answer reads ``"<redacted>"`` for:

- each setting whose name says it is a secret (``SECRET_NAME``: ``api_key``, ``admin_api_key``,
  ``ssl_keyfile_password``, a ``"secret_key"`` inside a JSON setting such as
  ``--hicache-storage-backend-extra-config``);
- in the command line, the value after each secret flag (``--api-key K``, ``--api-key=K``, argparse's
  ``--admin-api K``) and each secret's value wherever else it appears;
- in every string, a URL's user information (``postgresql://<redacted>@db/c``) and secret query
  parameters (``?password=<redacted>``).

A setting that holds one value (``model_path``, ``served_model_name``: what a router such as SMG reads)
is never rewritten for containing a secret's value: a key that happens to be "tiny" leaves the model named.
"""

from __future__ import annotations

import json
import re

from sglang_mint.sglang.flags import mint_config

REDACTED = "<redacted>"
# ServerArgs fields that are secrets (the watermark's SGLang redacts itself); their flags
SECRET_FIELDS = ("api_key", "admin_api_key", "ssl_keyfile_password")
SECRET_FLAGS = tuple("--" + name.replace("_", "-") for name in SECRET_FIELDS)
SHORTEST_FLAG_PREFIX = len("--api")  # argparse takes any unambiguous prefix of a flag
# A setting's (or a JSON key's, or a query parameter's) name that says its value is a secret
# (a bare "token" is a secret in a JSON setting or a query; a setting named *_token counts tokens)
_SECRET_WORDS = (r"password|passwd|pwd|secret|secret_key|access_key|api_key|apikey|credentials?|"
                 r"auth_token|access_token|hf_token|bearer_token|refresh_token")
SECRET_NAME = re.compile(rf"(?i)^(?:[a-z0-9]+_)*(?:{_SECRET_WORDS})$")
_JSON_SECRET = re.compile(rf'(?i)(?P<head>"(?:[a-z0-9]+_)*(?:{_SECRET_WORDS}|token)"\s*:\s*)"(?:[^"\\]|\\.)*"')
_URL_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://)[^\s/]+@")  # to the host's @, past a password's
_QUERY_SECRET = re.compile(rf"(?i)(?P<head>[?&](?:{_SECRET_WORDS}|token|sig|signature|key)=)[^&\s]*")
SHORTEST_SECRET_REPLACED_ANYWHERE = 6  # in the command line; a shorter one only as a flag's value


def redact_text(text: str) -> str:
    """``text`` with URL user information, secret query parameters and secret JSON values replaced."""
    text = _JSON_SECRET.sub(lambda m: f'{m["head"]}"{REDACTED}"', text)
    text = _URL_USERINFO.sub(lambda m: f"{m['head']}{REDACTED}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['head']}{REDACTED}", text)


def _is_secret_flag(token: str) -> bool:
    return len(token) >= SHORTEST_FLAG_PREFIX and any(flag.startswith(token) for flag in SECRET_FLAGS)


def redact_command_line(command: str, secrets: tuple[str, ...] = ()) -> str:
    """SGLang's ``launch_command`` (``" ".join(argv)``) without the secret flags' values, the secrets'
    values (those of at least 6 characters or of several words, wherever they appear) and what
    ``redact_text`` removes."""
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= SHORTEST_SECRET_REPLACED_ANYWHERE or " " in secret:  # a value of several argv words
            command = command.replace(secret, REDACTED)
    tokens = command.split(" ")
    for i, token in enumerate(tokens):
        flag, equals, _ = token.partition("=")
        if equals and _is_secret_flag(flag):
            tokens[i] = f"{flag}={REDACTED}"
        elif _is_secret_flag(token) and i + 1 < len(tokens):
            tokens[i + 1] = REDACTED
    return redact_text(" ".join(tokens))


def secrets_of(server_args) -> tuple[str, ...]:
    return tuple(value for value in (getattr(server_args, name) for name in SECRET_FIELDS) if value)


def redact_settings(settings, secrets: tuple[str, ...] = ()):
    """A copy of ``settings`` (dicts, lists and strings, as JSON holds them) without the secrets."""
    if isinstance(settings, dict):
        return {key: (REDACTED if isinstance(key, str) and SECRET_NAME.match(key) and value not in (None, "", False)
                      else redact_command_line(value, secrets) if key == "launch_command" and isinstance(value, str)
                      else redact_settings(value, secrets))
                for key, value in settings.items()}
    if isinstance(settings, (list, tuple)):
        items = [redact_settings(value, secrets) for value in settings]
        return type(settings)(*items) if hasattr(settings, "_fields") else type(settings)(items)  # a namedtuple
    return redact_text(settings) if isinstance(settings, str) else settings


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
