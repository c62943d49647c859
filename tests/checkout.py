"""Which checkout the tests run against: the shared virtualenv holds one editable install of
sglang_mint, and it follows the checkout that ran ``make setup`` last. Tests run from another
checkout would test that one's code, and SGLang servers they start would load its plugin."""

from __future__ import annotations

from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[1]


def installed_elsewhere(package_file: str, checkout: Path = CHECKOUT) -> str | None:
    """Why the imported ``sglang_mint`` (its ``__init__.py`` at ``package_file``) is not this
    checkout's, or None when it is."""
    installed = Path(package_file).resolve().parents[1]
    if installed == checkout.resolve():
        return None
    return (f"sglang_mint is imported from {installed}, not from this checkout ({checkout}): the "
            "virtualenv's editable install follows the checkout that ran `make setup` last. "
            "Run `make setup` (or `make test`) here.")
