"""The packed adapter format (``.mintpack``): one file, one read, one copy.

Engine-agnostic: nothing here imports sglang. See :mod:`sglang_mint.packed.format`
for the versioned spec, ``docs/packed.md`` for the why.
"""

from sglang_mint.packed.format import FORMAT_VERSION, PACKED_FILE, PackedError
from sglang_mint.packed.reader import PackedAdapter, read_packed
from sglang_mint.packed.writer import write_packed

__all__ = ["FORMAT_VERSION", "PACKED_FILE", "PackedError", "PackedAdapter", "read_packed", "write_packed"]
