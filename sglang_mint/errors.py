"""Errors the core raises. Each message names what is wrong and with what."""

import errno

# What a write raises when there is no room for it: the disk or shared memory full, a disk quota, the
# process's file-size limit (RLIMIT_FSIZE)
NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def shown(value, limit: int = 40) -> str:
    """``value`` as ``repr`` shows it, cut to its start past ``limit`` characters: an error names a bad
    value without echoing a megabyte of it. ``shown("x" * 10**6)`` ->
    ``'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx'... (1000000 characters)``; ``shown(10**400)`` the same way."""
    text = repr(value)
    if len(text) <= limit:
        return text
    if isinstance(value, str):
        return f"{value[:limit - 8]!r}... ({len(value)} characters)"
    return f"{text[:limit - 8]}... ({len(text)} characters)"


class MintError(Exception):
    """Base of every error sglang-mint raises on bad input or state.

    ``http_status`` is what the serving path answers when the error reaches a
    client (404 for an unknown adapter, 400 for a malformed id, ...).
    """

    http_status = 400


class InvalidAdapterId(MintError):
    http_status = 400


class AdapterNotFound(MintError):
    http_status = 404


class NoRoom(MintError):
    """A write found no room (``NO_ROOM_ERRNOS``): HTTP's 507 Insufficient Storage."""
    http_status = 507


def no_room(exc: OSError, where: str, path: str | None = None) -> NoRoom | None:
    """The NoRoom for ``exc`` if it is one (else None), naming ``where`` and the path it wrote to."""
    if exc.errno not in NO_ROOM_ERRNOS:
        return None
    path = path or exc.filename
    return NoRoom(f"{where}: no room left to write{f' to {path}' if path else ''} ({exc.strerror}); "
                  "free space there, or raise the quota or file-size limit, and try again")


class HooksNotApplied(MintError):
    """A row of sglang/hooks.py's HOOKS SGLang did not apply, or one of INTERNALS it lacks: this process
    refuses to start."""
    http_status = 500


def refusal(what: str, role: str) -> HooksNotApplied:
    return HooksNotApplied(
        f"sglang-mint could not {what} in the {role} process, so it would run half installed; refusing to "
        "start. This SGLang is not the version sglang-mint supports (sglang==0.5.23), or another plugin "
        "replaced these targets.")


def has_attribute(owner, name: str) -> bool:
    """``owner`` has the attribute ``name`` ("a.b": b of a; a class's dataclass fields count)."""
    for part in name.split("."):
        if not hasattr(owner, part) and part not in getattr(owner, "__annotations__", {}):
            return False
        owner = getattr(owner, part, None)
    return True
