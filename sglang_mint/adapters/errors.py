"""Errors an adapter's checks raise. Each message names the file, tensor or module at fault."""

from sglang_mint.errors import MintError

__all__ = ["BaseModelMismatch", "InvalidAdapter"]


class InvalidAdapter(MintError):
    """An adapter folder or file that cannot be imported (config, safetensors, shapes)."""

    http_status = 400


class BaseModelMismatch(InvalidAdapter):
    """An adapter trained for another base model than the catalog's."""
