"""Per-adapter usage accounting: the ledger each engine writes and ``GET /mint/usage`` reads."""

from sglang_mint.usage.ledger import UsageLedger, read_usage

__all__ = ["UsageLedger", "read_usage"]
