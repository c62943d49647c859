"""A revision's metadata: a JSON object that every reader of the catalog can write back out.

Metadata is the publisher's (``{"step": 1200, "epoch": 0.5}``), stored as JSON text with the
revision and answered by ``GET /mint/adapters/{id}``, whose JSON writer (orjson, as FastAPI's)
refuses some of what Python's json module reads and writes: an integer outside 64 bits, a string
holding a lone UTF-16 surrogate (``"\\ud800"`` in the JSON), nesting past 254 levels. Such
metadata was stored, and every later read of the adapter answered 500. NaN and Infinity (and
``1e400``, read as inf) are no JSON numbers at all. ``check_metadata`` refuses each at publish,
before anything is written, naming where it is::

    check_metadata({"loss": float("nan")})   # InvalidMetadata: metadata['loss']: nan is not a JSON number
"""

from __future__ import annotations

import json
import math

from sglang_mint.catalog.errors import InvalidMetadata
from sglang_mint.errors import shown

MAX_DEPTH = 64  # levels of objects and arrays; the adapter view wraps metadata in 3 more, orjson stops at 254
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1  # what orjson writes: i64 and u64


def lone_surrogate(text: str) -> str | None:
    """The first lone UTF-16 surrogate in ``text`` (json.loads reads ``"\\ud800"`` into one), or None:
    such a string is no text, and UTF-8 cannot encode it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return text[exc.start]
    return None


def check_metadata(metadata) -> None:
    """Raise InvalidMetadata naming the first value in ``metadata`` that is not plain JSON (above)."""
    if not isinstance(metadata, dict):
        raise InvalidMetadata(f'metadata must be a JSON object, e.g. {{"step": 1200}}, got {type(metadata).__name__}')
    stack = [(metadata, "metadata", 0)]
    while stack:  # no recursion: the depth is checked, not trusted
        value, where, depth = stack.pop()
        if isinstance(value, dict):
            items = list(value.items())
        elif isinstance(value, (list, tuple)):
            items = list(enumerate(value))
        else:
            _check_scalar(value, where)
            continue
        if depth == MAX_DEPTH:
            raise InvalidMetadata(f"{where}: nested more than {MAX_DEPTH} levels deep")
        for key, item in reversed(items):  # reversed: the first problem in reading order is named
            if isinstance(value, dict):
                if not isinstance(key, str):
                    raise InvalidMetadata(f"{where}: key {key!r} is not a string")
                _check_text(key, f"{where}: key {shown(key)}")
            stack.append((item, f"{where}[{shown(key)}]", depth + 1))


def _check_scalar(value, where: str) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise InvalidMetadata(f"{where}: an integer of {value.bit_length()} bits does not fit in 64 bits")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidMetadata(f"{where}: {value!r} is not a JSON number")
    elif isinstance(value, str):
        _check_text(value, where)
    else:
        raise InvalidMetadata(f"{where}: a {type(value).__name__} is not a JSON value")


def _check_text(text: str, where: str) -> None:
    bad = lone_surrogate(text)
    if bad is not None:
        raise InvalidMetadata(f"{where}: the string holds a lone UTF-16 surrogate ({bad!r}), which is not text")


def shown_metadata(metadata):
    """``metadata`` as near as plain JSON can show it, for metadata stored before ``check_metadata``
    ran at publish: an integer past 64 bits and nesting past MAX_DEPTH become their JSON text, a
    lone surrogate its escape (``"a\\ud800b"``), NaN and Infinity null. Plain metadata is returned
    as it is. Example: ``{"step": 10**20}`` -> ``{"step": "100000000000000000000"}``."""
    import json

    def readable(value, depth: int):
        if isinstance(value, dict):
            if depth == MAX_DEPTH:
                return json.dumps(value)
            keys = [_escaped(str(k)) for k in value]
            if len(set(keys)) < len(keys):  # "a\ud800" and "a\\ud800" escape alike: shown whole, as text
                return json.dumps(value, ensure_ascii=True)
            return {key: readable(v, depth + 1) for key, v in zip(keys, value.values())}
        if isinstance(value, list):
            return json.dumps(value) if depth == MAX_DEPTH else [readable(v, depth + 1) for v in value]
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return value if INT_MIN <= value <= INT_MAX else str(value)
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        return _escaped(value) if isinstance(value, str) else repr(value)

    try:
        check_metadata(metadata)
        return metadata
    except InvalidMetadata:
        return readable(metadata, 0)


def _escaped(text: str) -> str:
    return text if lone_surrogate(text) is None else text.encode("utf-8", "backslashreplace").decode("utf-8")
