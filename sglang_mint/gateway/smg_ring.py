"""SMG's consistent-hashing ring, computed here: which engine a routing key lands on.

SMG 1.13.0 (``model_gateway/src/worker/hash_ring.rs``) places each worker URL at 150
virtual nodes, ``blake3(f"{url}#{i}")`` read as a little-endian u64 from its first 8
bytes, and sends a key to the first healthy worker clockwise from ``blake3(key)``.
The ring holds every registered worker of the model, healthy or not; an unhealthy one
is skipped, so a key whose engine died walks on to the next.

    ring = SMGRing(["http://127.0.0.1:30001", "http://127.0.0.1:30002"])
    ring.walk("acme/bot")        # every URL, in the order SMG would try them
    ring.key_for("acme/bot", "http://127.0.0.1:30002")   # "acme/bot#3": a key that lands there

BLAKE3 is here for one chunk (inputs up to 1,024 bytes: URLs and routing keys, which SMG
caps at 128), in plain Python, so the package needs no compiled hash library.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable

VIRTUAL_NODES_PER_WORKER = 150
MAX_KEY_BYTES = 128  # SMG ignores a longer X-SMG-Routing-Key
MAX_SALT = 256  # key_for tries adapter#1 .. adapter#256: with n engines one in n lands on each

_IV = (0x6A09E667, 0xBB67AE85, 0x3C6EF372, 0xA54FF53A, 0x510E527F, 0x9B05688C, 0x1F83D9AB, 0x5BE0CD19)
_PERMUTATION = (2, 6, 3, 10, 7, 0, 4, 13, 1, 11, 12, 5, 9, 14, 15, 8)
_CHUNK_START, _CHUNK_END, _ROOT = 1, 2, 8
_CHUNK_LEN, _BLOCK_LEN, _M32 = 1024, 64, 0xFFFFFFFF


def _g(s: list[int], a: int, b: int, c: int, d: int, mx: int, my: int) -> None:
    """BLAKE3's quarter-round, unrolled as in its reference: its two halves differ only in the
    message word and the rotations, and a loop over them hashes 20% slower."""
    s[a] = (s[a] + s[b] + mx) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x >> 16) | (x << 16)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x >> 12) | (x << 20)) & _M32
    s[a] = (s[a] + s[b] + my) & _M32
    x = s[d] ^ s[a]
    s[d] = ((x >> 8) | (x << 24)) & _M32
    s[c] = (s[c] + s[d]) & _M32
    x = s[b] ^ s[c]
    s[b] = ((x >> 7) | (x << 25)) & _M32


def _compress(cv: list[int], m: list[int], block_len: int, flags: int) -> list[int]:
    s = [*cv, *_IV[:4], 0, 0, block_len, flags]  # chunk counter 0: one chunk only
    for round_ in range(7):
        _g(s, 0, 4, 8, 12, m[0], m[1])
        _g(s, 1, 5, 9, 13, m[2], m[3])
        _g(s, 2, 6, 10, 14, m[4], m[5])
        _g(s, 3, 7, 11, 15, m[6], m[7])
        _g(s, 0, 5, 10, 15, m[8], m[9])
        _g(s, 1, 6, 11, 12, m[10], m[11])
        _g(s, 2, 7, 8, 13, m[12], m[13])
        _g(s, 3, 4, 9, 14, m[14], m[15])
        if round_ < 6:
            m = [m[i] for i in _PERMUTATION]
    return [s[i] ^ s[i + 8] for i in range(8)]


def blake3_digest(data: bytes) -> bytes:
    """BLAKE3's 32-byte hash of ``data`` (at most 1,024 bytes: one chunk)."""
    if len(data) > _CHUNK_LEN:
        raise ValueError(f"{len(data)} bytes: blake3_digest hashes one chunk, at most {_CHUNK_LEN} bytes")
    blocks = [data[i:i + _BLOCK_LEN] for i in range(0, len(data), _BLOCK_LEN)] or [b""]
    cv = list(_IV)
    for i, block in enumerate(blocks):
        flags = (_CHUNK_START if i == 0 else 0) | (_CHUNK_END | _ROOT if i == len(blocks) - 1 else 0)
        words = list(struct.unpack("<16I", block.ljust(_BLOCK_LEN, b"\0")))
        cv = _compress(cv, words, len(block), flags)
    return struct.pack("<8I", *cv)


def ring_position(text: str) -> int:
    """Where SMG puts ``text`` on its ring: the first 8 bytes of its BLAKE3 hash, little-endian."""
    return int.from_bytes(blake3_digest(text.encode())[:8], "little")


class SMGRing:
    """The ring SMG builds over one model's registered worker URLs."""

    def __init__(self, urls: Iterable[str]):
        self.urls = sorted(set(urls))
        entries = sorted((ring_position(f"{url}#{i}"), url)
                         for url in self.urls for i in range(VIRTUAL_NODES_PER_WORKER))
        self._positions = [p for p, _ in entries]
        self._owners = [u for _, u in entries]

    def walk(self, key: str) -> list[str]:
        """Every URL once, in the order SMG tries them for ``key`` (the first healthy one wins)."""
        if not self._owners:
            return []
        start = bisect.bisect_left(self._positions, ring_position(key))
        seen: list[str] = []
        for i in range(len(self._owners)):
            url = self._owners[(start + i) % len(self._owners)]
            if url not in seen:
                seen.append(url)
                if len(seen) == len(self.urls):
                    break
        return seen

    def home(self, key: str) -> str | None:
        """The engine ``key`` lands on while every engine is healthy (the first step of its walk)."""
        if not self._owners:
            return None
        return self._owners[bisect.bisect_left(self._positions, ring_position(key)) % len(self._owners)]

    def key_for(self, adapter_id: str, url: str) -> str | None:
        """A routing key that lands ``adapter_id`` on ``url``: the id itself if that is its home,
        else ``<id>#<n>`` (``#`` is in no adapter id, so no key is another adapter's); None if
        none fits SMG's 128 bytes."""
        if url not in self.urls:
            raise ValueError(f"{url} is not on the ring ({', '.join(self.urls) or 'no workers'})")
        if self.home(adapter_id) == url:
            return adapter_id
        for n in range(1, MAX_SALT + 1):
            key = f"{adapter_id}#{n}"
            if len(key.encode()) > MAX_KEY_BYTES:
                return None
            if self.home(key) == url:
                return key
        return None
