"""The most memory Python allocated while a call ran, for tests that bound what parsing a hostile
input holds (tests/adapters/test_header_memory.py, tests/packed/test_packed_header_memory.py)."""

from __future__ import annotations

import tracemalloc


def peak_of(call, refusal: type[Exception]) -> tuple[int, Exception | None]:
    """(peak bytes Python allocated while ``call()`` ran, the ``refusal`` it raised, or None)."""
    tracemalloc.start()
    try:
        call()
        error = None
    except refusal as exc:
        error = exc
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak, error
