"""The ``--enable-mint`` / ``--mint-*`` launch flags.

They are added to ``python -m sglang.launch_server``'s parser (so they appear
in its ``--help``), validated after parsing, and carried to every process as
``server_args._mint``: ServerArgs pickles its underscore bookkeeping together
with its fields when it starts a subprocess. Without ``--enable-mint`` the
attribute is None and every hook of the plugin passes through.
"""

from __future__ import annotations

import argparse

from sglang_mint.config import MintConfig
from sglang_mint.errors import MintError

MINT_BACKEND = "mint"


def mint_config(server_args) -> MintConfig | None:
    """The plugin's settings for this server, or None when it runs as stock SGLang."""
    return getattr(server_args, "_mint", None)


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
        "--mint-advertise-url",
        metavar="URL",
        default=None,
        help="The URL the gateway reaches this server at (default http://<--host>:<--port>; with --host "
        "0.0.0.0 this machine's host name). Requires --mint-gateway.",
    )
    # `--lora-backend mint`: SGLang's parser fixes the choices, so extend them.
    for action in parser._actions:
        if action.dest == "lora_backend" and action.choices is not None:
            if MINT_BACKEND not in action.choices:
                action.choices = list(action.choices) + [MINT_BACKEND]
            action.help = (action.help or "") + " 'mint' is sglang-mint's backend."


def _after_add_cli_args(result, parser, *args, **kwargs):
    add_mint_arguments(parser)
    return result


def _after_from_cli_args(server_args, cls, namespace, *args, **kwargs):
    from sglang_mint.sglang.cpu_compat import default_thread_binding

    default_thread_binding(server_args)  # with or without --enable-mint, like the other CPU fixes
    enabled = getattr(namespace, "enable_mint", False)
    catalog = getattr(namespace, "mint_catalog", None)
    cache_flags = {
        "host_cache": getattr(namespace, "mint_host_cache_bytes", None),
        "pin": getattr(namespace, "mint_pin", None),
        "load_workers": getattr(namespace, "mint_load_workers", None),
        "max_upload": getattr(namespace, "mint_max_upload_bytes", None),
        "max_concurrent_uploads": getattr(namespace, "mint_max_concurrent_uploads", None),
        "dp_dispatch": getattr(namespace, "mint_dp_dispatch", None),
        "gateway": getattr(namespace, "mint_gateway", None),
        "advertise_url": getattr(namespace, "mint_advertise_url", None),
        "catalog_cache": getattr(namespace, "mint_catalog_cache", None),
        "blob_cache": getattr(namespace, "mint_blob_cache_bytes", None),
    }
    if not enabled:
        if catalog is not None or any(v is not None for v in cache_flags.values()):
            raise SystemExit("error: --mint-catalog and the other --mint-* flags require --enable-mint")
        server_args._mint = None
        return server_args
    if not (server_args.enable_lora or server_args.lora_paths):
        raise SystemExit("error: --enable-mint needs LoRA on: add --enable-lora (or --lora-paths)")
    pp = getattr(server_args, "pp_size", 1) or 1
    if catalog is not None and pp > 1:
        # Pipeline stages hold different layers: each would read and agree on its own part of an
        # adapter, which is not built (tensor and data parallelism are, see residency_sync.py).
        raise SystemExit(f"error: --mint-catalog does not support pipeline parallelism yet, got --pp-size {pp}")
    workers = getattr(server_args, "tokenizer_worker_num", 1) or 1
    if workers > 1:
        # SGLang's extra tokenizer workers are spawned without loading plugins, so a bare adapter
        # id would silently serve the base model there.
        raise SystemExit(f"error: --enable-mint serves with one tokenizer manager; got --tokenizer-worker-num "
                         f"{workers} (SGLang does not load plugins into extra tokenizer workers)")
    try:
        server_args._mint = MintConfig.from_flags(catalog=catalog, **cache_flags)
        if catalog is not None:
            check_catalog_serves(server_args._mint, server_args.model_path)
    except MintError as exc:
        raise SystemExit(f"error: {exc}") from None
    return server_args


def check_catalog_serves(config: MintConfig, model_path: str) -> None:
    """Refuse a catalog made for another base model than the one being served.

    Both sides are compared by identity (architecture and every shape-relevant size, see
    ``catalog.base``). A model given as a hub id, not a local folder, cannot be read here
    without the network; its adapters are still checked one by one as they load.
    """
    import os

    from sglang_mint.adapters.base_model import load_base_model

    if not os.path.isfile(os.path.join(model_path, "config.json")):
        return
    served = load_base_model(model_path)
    with config.open_catalog() as catalog:
        base, shown = catalog.base, catalog.display
    if served.identity != base.identity:
        raise MintError(f"--mint-catalog {shown} was made for base model {base.name!r} ({base.identity}), "
                        f"but the server serves {model_path!r} ({served.identity}); adapters trained for one do "
                        "not fit the other")

