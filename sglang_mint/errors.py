"""Errors the core raises. Each message names what is wrong and with what."""


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
