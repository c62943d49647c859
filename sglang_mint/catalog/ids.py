"""Adapter id rules.

An adapter id is what a client puts in the OpenAI ``model`` field and what the
catalog keys on. It is a name, never a path:

- 1 to 128 characters, ASCII only;
- characters ``A-Z a-z 0-9 . _ -`` plus ``/`` as a namespace separator;
- no leading ``/``, no trailing ``/``, no empty segment (``a//b``);
- no segment that is ``.`` or ``..`` (so ``../x`` and ``a/./b`` are refused).

Examples: ``support-bot``, ``acme/support-bot``, ``acme/team.a/v2_final``.
Refused: ``""``, ``/etc/passwd``, ``../x``, ``a//b``, ``caf\\u00e9``, ``a\\x00b``,
a Cyrillic ``\\u0430`` that looks like a Latin ``a``.
"""

from __future__ import annotations

import re

from sglang_mint.errors import InvalidAdapterId

MAX_ID_LENGTH = 128
_ALLOWED = re.compile(r"[A-Za-z0-9._/-]+\Z")


def validate_adapter_id(s: str) -> str:
    """Return ``s`` unchanged if it is a valid adapter id, else raise InvalidAdapterId.

    The message names the first problem found, e.g.
    ``adapter id '../x' has a '..' segment (ids are names, never paths)``.
    """
    if not isinstance(s, str):
        raise InvalidAdapterId(f"adapter id must be a string, got {type(s).__name__}")
    if not s:
        raise InvalidAdapterId("adapter id is empty (1 to 128 characters expected)")
    if len(s) > MAX_ID_LENGTH:
        raise InvalidAdapterId(
            f"adapter id is {len(s)} characters long, at most {MAX_ID_LENGTH} allowed: {s[:40]!r}..."
        )
    if _ALLOWED.match(s) is None:
        bad = next(c for c in s if not _ALLOWED.match(c))
        if ord(bad) < 32 or ord(bad) == 127:
            what = f"control character {bad!r}"
        elif ord(bad) > 127:
            what = f"non-ASCII character {bad!r} (U+{ord(bad):04X}); only ASCII is allowed"
        else:
            what = f"character {bad!r}"
        raise InvalidAdapterId(
            f"adapter id {s!r} contains {what}; allowed: A-Z a-z 0-9 . _ - and / as namespace separator"
        )
    if s.startswith("/"):
        raise InvalidAdapterId(f"adapter id {s!r} starts with '/' (ids are names, never absolute paths)")
    for seg in s.split("/"):
        if seg == "":
            raise InvalidAdapterId(f"adapter id {s!r} has an empty segment (leading, trailing or double '/')")
        if seg in (".", ".."):
            raise InvalidAdapterId(f"adapter id {s!r} has a {seg!r} segment (ids are names, never paths)")
    return s


def revision_name(adapter_id: str, revision: int) -> str:
    """The name of one revision: ``("acme/bot", 3)`` -> ``"acme/bot@3"`` (ids never contain '@')."""
    return f"{adapter_id}@{revision}"


def parse_revision_name(name: str) -> tuple[str, int]:
    """``"acme/bot@3"`` -> ``("acme/bot", 3)``; InvalidAdapterId naming what is wrong otherwise.

    Refused: ``"acme/bot"`` (no revision), ``"acme/bot@"``, ``"acme/bot@x"``, ``"acme/bot@0"``,
    ``"a@1@2"``, and any id the rules above refuse.
    """
    if not isinstance(name, str) or "@" not in name:
        raise InvalidAdapterId(f"{name!r} is not <adapter-id>@<revision>")
    adapter_id, _, revision = name.rpartition("@")
    if not (revision.isascii() and revision.isdigit()) or revision.startswith("0") or len(revision) > 18:
        raise InvalidAdapterId(f"{name!r}: revision {revision!r} is not a positive integer")
    return validate_adapter_id(adapter_id), int(revision)
