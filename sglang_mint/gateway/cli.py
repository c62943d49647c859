"""``mint gateway rebalance``: place adapters on SMG's engines by their request rate (placement.py)."""

from __future__ import annotations

import argparse
import json
import os

DESCRIPTION = """\
Even the engines' shares behind SMG without losing adapter affinity. Each adapter's request
rate over the window is read from the engines' usage ledger; adapters are placed whole, the
busiest first: one with at least 1/16 of an engine's share on the least loaded engine, any
other on the first engine of its consistent-hashing ring walk whose planned rate stays under
--load-factor x the mean. Those that move get a routing key that lands them there, baked
into the gateway's adapter-route middleware, which is replaced without a gap.
Adapters not seen in the window keep their ring engine. The gateway must run
--policy consistent_hashing with --enable-wasm; before anything changes, its policy is read
from its metrics (--gateway-metrics) and --base-model is checked against what its engines
serve. Run it again as popularity shifts (for example every 10 minutes); each run takes
about 30 s of the gateway host's CPU.

The rates come from one ledger folder the engines share (--usage-dir: engines on one
machine), or with --usage-from-engines from each healthy engine's GET /mint/usage, an
admin endpoint (engines on several machines; a folder shared by several is counted once).
"""


SMG_METRICS_PORT = 29000  # SMG's --prometheus-port when it is not given


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from sglang_mint.config import default_cache_dir
    from sglang_mint.gateway.placement import DEFAULT_LOAD_FACTOR

    p = subparsers.add_parser("gateway", help="operate SGLang's gateway (SMG) in front of mint engines",
                              description="Operate SGLang's gateway (SMG, smg launch) in front of mint engines.")
    sub = p.add_subparsers(dest="gateway_command", metavar="COMMAND")
    sub.required = True
    r = sub.add_parser("rebalance", help="place adapters on engines by request rate, affinity kept",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--gateway", required=True, help="SMG's URL, e.g. http://127.0.0.1:30080")
    r.add_argument("--gateway-metrics", metavar="URL",
                   help="SMG's Prometheus listener, http://HOST:PORT (its --prometheus-host and --prometheus-port), "
                        "where SMG names its routing policy, checked before anything changes (default: "
                        f"--gateway's host, port {SMG_METRICS_PORT}, SMG's own default)")
    r.add_argument("--base-model", required=True, help="the engines' served model name (the middleware rewrites "
                   "model=<adapter-id> to it); checked against what the engines serve before anything changes")
    source = r.add_mutually_exclusive_group()
    source.add_argument("--usage-dir", default=str(default_cache_dir() / "usage"),
                        help="the engines' usage ledger folder, their --mint-usage-dir (default %(default)s)")
    source.add_argument("--usage-from-engines", action="store_true",
                        help="ask each healthy engine behind the gateway for its ledger (GET /mint/usage) "
                             "instead of reading a folder")
    r.add_argument("--admin-api-key", default=os.environ.get("MINT_ADMIN_API_KEY"),
                   help="the engines' --admin-api-key, for --usage-from-engines (default: $MINT_ADMIN_API_KEY; "
                        "an engine without one answers its own machine only); prefer $MINT_ADMIN_API_KEY: a key "
                        "on the command line is visible to every user of this machine in ps")
    r.add_argument("--window-minutes", type=float, default=60.0,
                   help="rates over the last this many minutes (default %(default)s)")
    r.add_argument("--load-factor", type=float, default=DEFAULT_LOAD_FACTOR,
                   help="an engine's planned rate at most this times the mean (default %(default)s)")
    r.add_argument("--dry-run", action="store_true", help="print the placement, change nothing")
    r.set_defaults(func=run_rebalance)


def run_rebalance(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path
    from urllib.parse import urlsplit

    from sglang_mint.config import check_http_url
    from sglang_mint.errors import MintError
    from sglang_mint.gateway.smg import (check_base_model, check_gateway_policy, gateway_workers, plan_placement,
                                         rebalance, requests_from_engines)
    from sglang_mint.usage.ledger import requests_by_adapter

    if args.load_factor < 1.0:
        raise MintError(f"--load-factor {args.load_factor}: must be at least 1.0")
    args.gateway = check_http_url("--gateway", args.gateway)
    host = urlsplit(args.gateway).hostname
    metrics = (check_http_url("--gateway-metrics", args.gateway_metrics) if args.gateway_metrics else
               f"http://{f'[{host}]' if ':' in host else host}:{SMG_METRICS_PORT}")
    since, unread, workers = time.time() - args.window_minutes * 60, [], None
    if args.usage_from_engines:
        try:
            workers = gateway_workers(args.gateway)  # read once: the engines counted are the engines placed on
        except OSError as exc:
            raise MintError(f"cannot reach SMG at {args.gateway}: {exc}") from None
        urls = [w["url"] for w in workers if w.get("is_healthy")]
        rates, unread = requests_from_engines(urls, since, admin_api_key=args.admin_api_key)
        where = f"the ledgers of {len(urls) - len(unread)} engines"
    else:
        if not Path(args.usage_dir).is_dir():
            raise MintError(f"--usage-dir {args.usage_dir}: no such folder (engines write their ledger to "
                            "--mint-usage-dir)")
        rates, where = requests_by_adapter(args.usage_dir, since=since), args.usage_dir
    if not rates:
        raise MintError(f"no adapter requests in {where} over the last {args.window_minutes:g} minutes: "
                        "nothing to place")
    try:
        if args.dry_run:
            placement = plan_placement(args.gateway, rates, args.load_factor, workers)
        else:  # the middleware replaces the one in use: refuse one that would route nothing right
            if workers is None:
                workers = gateway_workers(args.gateway)
            check_base_model(args.base_model, workers)
            check_gateway_policy(metrics)
            placement, _ = rebalance(args.gateway, args.base_model, rates, args.load_factor, workers)
    except ValueError as exc:
        raise MintError(str(exc)) from None
    except OSError as exc:
        raise MintError(f"cannot reach SMG at {args.gateway}: {exc}") from None
    print(json.dumps({"dry_run": args.dry_run, "requests_counted": sum(rates.values()), "usage_unread": unread,
                      **placement.summary(), "moved": placement.routing_keys}, indent=2))
    return 0
