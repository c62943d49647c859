"""The suite refuses to run against another checkout's editable install (tests/checkout.py)."""

from __future__ import annotations

from checkout import CHECKOUT, installed_elsewhere

import sglang_mint


def test_this_checkout_is_the_one_installed():
    assert installed_elsewhere(sglang_mint.__file__) is None


def test_another_checkouts_install_is_named_with_the_fix(tmp_path):
    other = tmp_path / "fresh-clone" / "sglang_mint" / "__init__.py"
    other.parent.mkdir(parents=True)
    other.touch()
    why = installed_elsewhere(str(other))
    assert why and str(tmp_path / "fresh-clone") in why and str(CHECKOUT) in why and "make setup" in why
