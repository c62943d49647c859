"""The plugin's settings, as given by the ``--mint-*`` launch flags.

Engine-agnostic: the SGLang glue parses the flags into a ``MintConfig`` and
attaches it to the server arguments, which SGLang hands to every process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from sglang_mint.errors import MintError


@dataclass(frozen=True)
class MintConfig:
    """Settings every process of a server with ``--enable-mint`` shares."""

    catalog: str | None = None

    @classmethod
    def from_flags(cls, catalog: str | None = None) -> "MintConfig":
        """Validate the flags' values; raise MintError naming the flag at fault."""
        if catalog is not None:
            catalog = os.path.abspath(catalog)
            if not os.path.isdir(catalog):
                raise MintError(f"--mint-catalog {catalog}: no such folder")
        return cls(catalog=catalog)
