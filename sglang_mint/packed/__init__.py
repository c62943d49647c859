"""The packed adapter format (``.mintpack``): one file, one read, one copy.

Engine-agnostic: nothing here imports sglang. See :mod:`sglang_mint.packed.format`
for the versioned spec, ``docs/packed.md`` for the why. The reader and writer need
torch and are imported on first use, so ``mint catalog`` commands start without it.
"""

from sglang_mint.packed.format import FORMAT_VERSION, PACKED_FILE, PackedError

_LAZY = {"PackedAdapter": "reader", "read_packed": "reader", "write_packed": "writer"}

__all__ = ["FORMAT_VERSION", "PACKED_FILE", "PackedError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"sglang_mint.packed.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'sglang_mint.packed' has no attribute {name!r}")
