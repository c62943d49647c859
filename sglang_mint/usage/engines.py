"""Requests per adapter summed over engines that each answer ``GET /mint/usage``.

Engines on several machines keep a ledger folder each; engines on one machine may share
one, and then every one of them answers with the same rows. Each answer names the engines
whose files it read (``"engines"``), so an answer whose engines were already counted is
left out, and answers that share only some engines (folders holding copies of each other's
files) are refused rather than guessed at:

    merge_ledgers({"http://10.0.0.5:30000": answer, ...})   # answers of GET /mint/usage?by=adapter

gateway/smg.py:requests_from_engines asks the engines behind a gateway.
"""

from __future__ import annotations

from sglang_mint.errors import MintError
from sglang_mint.usage.ledger import requests_per_adapter

def merge_ledgers(answers: dict[str, dict]) -> dict[str, int]:
    """Requests per adapter over ``/mint/usage`` answers (``by=adapter``), keyed by engine URL; an
    answer that read the same engines' files as an earlier one is the same folder and is skipped."""
    counted: dict[frozenset, str] = {}
    total: dict[str, int] = {}
    for url, answer in answers.items():
        engines = frozenset(answer["engines"])
        if engines in counted:
            continue
        for other_engines, other in counted.items():
            if engines & other_engines:
                raise MintError(f"{url} and {other} read ledger files of the same engines "
                                f"({', '.join(sorted(engines & other_engines))}) but not of the same set: "
                                "give each engine its own --mint-usage-dir, or one shared by all on a machine")
        counted[engines] = url
        for adapter, requests in requests_per_adapter(answer["usage"]).items():
            total[adapter] = total.get(adapter, 0) + requests
    return total
