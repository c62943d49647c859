"""Every test module has its own file name: pytest imports test modules by their base name (``rootdir``
and ``prepend`` import mode, no packages), and a second module of the same name fails the whole
collection, every lane of ``make test`` with it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_two_test_modules_share_a_name():
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    shared = {name: sorted(str(p.relative_to(TESTS)) for p in TESTS.rglob(name)) for name, n in names.items() if n > 1}
    assert not shared, f"rename one of each: {shared}"
