"""Errors the core raises. Each message names what is wrong and with what."""


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
