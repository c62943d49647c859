"""``mint usage``: the usage ledger's rows, per adapter, revision and minute (usage/ledger.py)."""

from __future__ import annotations

import argparse
import json

DESCRIPTION = """\
What each adapter used: requests, prompt, cached and completion tokens, errors and cancellations, per revision
and minute, summed over every engine that writes to the folder (a server's --mint-usage-dir;
GET /mint/usage answers the same over HTTP). Moments are ISO 8601, UTC unless they say
(2026-12-05T04:00Z, 2026-12-05), or epoch seconds; since is inclusive, until exclusive.
"""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from sglang_mint.config import default_cache_dir

    p = subparsers.add_parser("usage", help="per-adapter usage from the engines' ledger", description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=str(default_cache_dir() / "usage"),
                   help="the ledger folder, a server's --mint-usage-dir (default %(default)s)")
    p.add_argument("--adapter", help="one adapter id; the base model's rows have none (default: every adapter)")
    p.add_argument("--since", help="first minute to include (default: the oldest kept)")
    p.add_argument("--until", help="moment to stop before (default: none, every row up to the newest)")
    p.add_argument("--by", choices=["minute", "adapter"], default="adapter",
                   help="a row per adapter and revision over the whole span (default), or per minute too")
    p.add_argument("--json", action="store_true", help="JSON lines, one per row, instead of a table")
    p.set_defaults(func=run_usage)


def run_usage(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sglang_mint.errors import MintError
    from sglang_mint.usage.ledger import FIELDS, parse_moment, read_usage

    if not Path(args.dir).is_dir():
        raise MintError(f"--dir {args.dir}: no such folder (a server writes its ledger to --mint-usage-dir)")
    try:
        since, until = (None if v is None else parse_moment(v) for v in (args.since, args.until))
    except ValueError as exc:
        raise MintError(str(exc)) from None
    rows = read_usage(args.dir, args.adapter, since, until, per_minute=args.by == "minute")
    if args.json:
        for row in rows:
            print(json.dumps(row))
        return 0
    keys = (["minute"] if args.by == "minute" else []) + ["adapter", "revision", *FIELDS]
    table = [keys] + [[_cell(row[k], k) for k in keys] for row in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(keys))]
    for line in table:
        print("  ".join(cell.ljust(w) if i < len(keys) - len(FIELDS) else cell.rjust(w)
                        for i, (cell, w) in enumerate(zip(line, widths))))
    if not rows:
        print("(no usage recorded in this span)")
    return 0


def _cell(value, key: str) -> str:
    if value is None:
        return "(base)" if key == "adapter" else "-"
    return f"{value:,}" if isinstance(value, int) and key != "revision" else str(value)
