"""The ``--enable-mint`` / ``--mint-*`` launch flags as the engine's ``--help`` shows them (their checks and the
settings they make: ``config.py``)."""

from __future__ import annotations

import argparse


def add_mint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "sglang-mint",
        "Serve LoRA adapters by id: put the adapter id in the OpenAI `model` field.",
    )
    group.add_argument(
        "--enable-mint",
        action="store_true",
        help="Turn the sglang-mint plugin on: `model` = <adapter-id> or <served-name>:<adapter-id> "
        "selects an adapter, an unknown id answers 404, a malformed one 400. "
        "Needs --enable-lora (or --lora-paths). Without this flag SGLang runs as stock.",
    )
    group.add_argument(
        "--mint-catalog",
        metavar="PATH|URL",
        default=None,
        help="Adapter catalog (made by `mint catalog init`): a folder, or postgresql://USER@HOST:PORT/DB "
        "shared by many engines (blobs where init recorded them: s3://... or a shared folder; keep the "
        "password in PGPASSWORD or ~/.pgpass). Every adapter in it is addressable by id; one that is not "
        "in memory is loaded in the background while other requests keep running. Requires --enable-mint.",
    )
    group.add_argument(
        "--mint-catalog-cache",
        metavar="DIR",
        default=None,
        help="With --mint-catalog postgresql://...: this engine's local folder for loadable views and the "
        "S3 blob cache (default $MINT_CATALOG_CACHE, else $MINT_CACHE_DIR/catalogs/<16 hex of the URL without "
        "its password>, $MINT_CACHE_DIR being ~/.cache/sglang-mint). A catalog folder keeps them inside it.",
    )
    group.add_argument(
        "--mint-blob-cache-bytes",
        metavar="SIZE",
        default=None,
        help="With a catalog whose blobs are in S3: local disk for downloaded blobs, e.g. 20GiB "
        "(default 10GiB); least recently used blobs are removed beyond it.",
    )
    group.add_argument(
        "--mint-host-cache-bytes",
        metavar="SIZE",
        default=None,
        help="Host memory for catalog adapters, e.g. 8GiB or 512MB (default 4GiB). Least recently "
        "used adapters that no request uses are evicted beyond it.",
    )
    group.add_argument(
        "--mint-grammar-cache-bytes",
        metavar="SIZE",
        default=None,
        help="Memory per scheduler for compiled grammars (a request's json_schema, regex, ebnf, structural_tag), "
        "e.g. 1GiB (default 512MiB): least recently used ones are dropped beyond it and compiled again when asked "
        "for. SGLang alone keeps every one, a failed one too, for good.",
    )
    group.add_argument(
        "--mint-max-sessions",
        metavar="N",
        type=int,
        default=None,
        help="SGLang sessions (/open_session) a scheduler keeps open at once (default 1024); one more is "
        "answered 429 until one is closed or reaped. SGLang alone keeps every session opened.",
    )
    group.add_argument(
        "--mint-session-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="The longest a session is kept idle before it is closed (default 600): an /open_session without "
        "a timeout gets this one, and one asking for longer is refused. SGLang alone keeps a session without "
        "a timeout until its client closes it.",
    )
    group.add_argument(
        "--mint-max-streaming-sessions",
        metavar="N",
        type=int,
        default=None,
        help="Of the sessions a scheduler keeps open, the streaming ones (/open_session with streaming: true, under "
        "--enable-streaming-session) it keeps open at once (default: a quarter of its request slots, --max-running-requests, at least "
        "1; never all of them). Each holds a request slot and its turns' KV cache from its first request until "
        "it is closed; one more is answered 429, and so is a turn that would take them past half the KV cache. "
        "SGLang alone lets sessions hold every slot, or all the KV cache, and then serves no other request.",
    )
    group.add_argument(
        "--mint-session-history-tokens",
        metavar="N",
        type=int,
        default=None,
        help="The tokens of its requests a non-streaming session keeps to continue from (default 65536, about "
        "21 bytes each); past them it forgets its least recently used requests, and continuing from one is a "
        "400. Its newest request is always kept. SGLang alone keeps every request of a session while it is open.",
    )
    group.add_argument(
        "--mint-max-top-logprobs",
        metavar="N",
        type=int,
        default=None,
        help="The most top logprobs a request may ask for per position (top_logprobs_num; logprobs, "
        "top_logprobs on the OpenAI routes; default 20); more is a 400. SGLang alone takes up to the vocabulary, "
        "which held the scheduler for many seconds on one long prompt.",
    )
    group.add_argument(
        "--mint-max-stored-responses",
        metavar="N",
        type=int,
        default=None,
        help="With --enable-response-store: the /v1/responses answers kept, each with its conversation "
        "(default 10000); the least recently used go first, and naming one afterwards is a 404. SGLang alone "
        "keeps every one.",
    )
    group.add_argument(
        "--mint-stored-responses-bytes",
        metavar="SIZE",
        default=None,
        help="With --enable-response-store: the memory those answers and their conversations may take in the "
        "frontend (default 1GiB), and as much again for conversations whose answer is not stored (failed, or "
        "still running). Past it the least recently used answers go, and the oldest unanswered conversations; "
        "one alone over it is not kept. SGLang alone keeps every one.",
    )
    group.add_argument(
        "--mint-max-background-responses",
        metavar="N",
        type=int,
        default=None,
        help="With --enable-response-store: the background /v1/responses answers queued or being made at once "
        "(default 256); one more is a 429 with Retry-After. A background request holds no connection while it "
        "waits; SGLang alone queues every one, ahead of the requests that come after.",
    )
    group.add_argument(
        "--mint-pin",
        metavar="ID",
        nargs="+",
        default=None,
        help="Catalog adapter ids never evicted from host memory.",
    )
    group.add_argument(
        "--mint-load-workers",
        metavar="N",
        type=int,
        default=None,
        help="Background threads per scheduler that read adapters from disk (default 2).",
    )
    group.add_argument(
        "--mint-max-upload-bytes",
        metavar="SIZE",
        default=None,
        help="Largest adapter upload POST /mint/adapters/<id>/revisions accepts, e.g. 16GiB "
        "(default 4GiB); a larger body is refused with 413 before it is read.",
    )
    group.add_argument(
        "--mint-max-request-bytes",
        metavar="SIZE",
        default=None,
        help="Largest body of any other request, e.g. 256MiB (default 64MiB; admin calls are not bounded); a "
        "larger one is refused with 413, before it is read where it declares its length. SGLang alone reads "
        "any body whole into memory.",
    )
    group.add_argument(
        "--mint-max-concurrent-uploads",
        metavar="N",
        type=int,
        default=None,
        help="Uploads POST /mint/adapters/<id>/revisions receives at once (default 2); one more is answered "
        "429 with Retry-After. Each streams to temp files beside the catalog, in a small constant of memory.",
    )
    group.add_argument(
        "--mint-dp-dispatch",
        choices=["affinity", "sglang"],
        default=None,
        help="With --dp-size above 1: 'affinity' (default) sends a catalog adapter's requests to the "
        "DP rank that keeps it warm while that rank's load allows; 'sglang' leaves every request to "
        "--load-balance-method.",
    )
    group.add_argument(
        "--mint-gateway",
        metavar="URL",
        default=None,
        help="SGLang's gateway (SMG) to join, e.g. http://10.0.0.9:30080: once this server answers /health it "
        "registers itself (POST /workers) and it deregisters when it stops; SMG's health checks drop it if it "
        "dies. Start SMG with `mint cluster` or as the README shows (consistent_hashing, --enable-wasm).",
    )
    group.add_argument(
        "--mint-usage-dir",
        metavar="DIR|off",
        default=None,
        help="The usage ledger: per adapter, revision and minute, the requests, prompt, cached and completion "
        "tokens and errors, appended every 2 s to hourly JSON-lines files (kept 30 days) in DIR (default "
        "$MINT_CACHE_DIR/usage); read with GET /mint/usage or `mint usage`. 'off' keeps none.",
    )
    group.add_argument(
        "--mint-advertise-url",
        metavar="URL",
        default=None,
        help="The URL the gateway reaches this server at (default http://<--host>:<--port>; with --host "
        "0.0.0.0 this machine's host name). Requires --mint-gateway.",
    )
