"""The plugin's settings, as given by the ``--enable-mint`` / ``--mint-*`` launch flags.

Engine-agnostic: ``launch_flags.add_mint_arguments`` puts the flags on the engine's argparse
parser (so they appear in its ``--help``), ``config_from_args`` checks them with
the engine settings they depend on and builds a ``MintConfig``, which the SGLang
glue (``sglang/flags.py``) attaches to the server arguments that SGLang hands
to every process.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sglang_mint.catalog.opening import DEFAULT_BLOB_CACHE_BYTES
from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.errors import MintError

DEFAULT_HOST_CACHE_BYTES = 4 << 30
DEFAULT_GRAMMAR_CACHE_BYTES = 512 << 20  # per scheduler: compiled grammars, keyed by a request's text
DEFAULT_LOAD_WORKERS = 2
# SGLang's sessions (/open_session), per scheduler: how many are open at once, and how long one is kept idle
DEFAULT_MAX_SESSIONS = 1024
DEFAULT_SESSION_TIMEOUT_S = 600.0
# the tokens of its requests a non-streaming session keeps to continue from: with the default sessions,
# at most about 1.4 GiB of a scheduler's memory (KEPT_REQUEST_OVERHEAD_TOKENS: ~21 bytes a token)
DEFAULT_SESSION_HISTORY_TOKENS = 65536
# top logprobs a request may ask for per position (vLLM's default max_logprobs too): past some hundreds, the
# scheduler and the tokenizer manager's loop spent seconds to minutes on one long prompt's
DEFAULT_MAX_TOP_LOGPROBS = 20
DEFAULT_MAX_STORED_RESPONSES = 10_000  # /v1/responses answers kept under --enable-response-store
# ... and what they and their conversations weigh (and as much again for conversations not answered)
DEFAULT_STORED_RESPONSES_BYTES = 1 << 30
# background /v1/responses answers queued or being made at once: about a GPU's batch. Each holds no connection
# while it waits, and 2,000 queued by one client made a plain answer wait 26 s
DEFAULT_MAX_BACKGROUND_RESPONSES = 256
# The largest adapter upload (POST /mint/adapters/{id}/revisions) a server reads. A rank-64 bf16
# LoRA on every dense module of a 70B model is about 1.6 GB; MoE-expert LoRA can be far larger.
DEFAULT_MAX_UPLOAD_BYTES = 4 << 30
# The largest body of any other request (frontend/body_limit.py): a 128k-token prompt is some 0.5 MB of text,
# an image sent inline a few MB
DEFAULT_MAX_REQUEST_BYTES = 64 << 20
# Uploads received at once; one more gets 429 with Retry-After. Each holds a small constant of
# memory (the body streams to temp files) but its size in temp disk until it is published.
DEFAULT_MAX_CONCURRENT_UPLOADS = 2

_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30, "tib": 1 << 40,
}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*\Z")


def parse_bytes(text: str) -> int:
    """``"8GiB"`` -> 8589934592, ``"512MB"`` -> 512000000, ``"1024"`` -> 1024."""
    m = _SIZE.match(str(text))
    unit = m.group(2).lower() if m else None
    if m is None or unit not in _UNITS:
        raise MintError(
            f"{text!r} is not a size; expected a number with an optional unit "
            "(B, KB, MB, GB, TB, KiB, MiB, GiB, TiB), e.g. 8GiB"
        )
    value = int(float(m.group(1)) * _UNITS[unit])
    if value <= 0:
        raise MintError(f"size {text!r} must be positive")
    return value


def _size_flag(flag: str, text: str | None, default: int) -> int:
    """A size flag's bytes (``parse_bytes``), ``default`` when not given; MintError naming the flag."""
    try:
        return parse_bytes(text) if text is not None else default
    except MintError as exc:
        raise MintError(f"{flag}: {exc}") from None


def _count_flag(flag: str, value: int | None, default: int, most: int) -> int:
    """A count flag's value, ``default`` when not given; MintError naming the flag outside 1 to ``most``."""
    value = default if value is None else value
    if not 1 <= value <= most:
        raise MintError(f"{flag} must be 1 to {most}, got {value}")
    return value


@dataclass(frozen=True)
class MintConfig:
    """Settings every process of a server with ``--enable-mint`` shares."""

    catalog: str | None = field(default=None, repr=False)  # a folder or a URL, which may hold a password
    host_cache_bytes: int = DEFAULT_HOST_CACHE_BYTES
    pinned: tuple[str, ...] = field(default_factory=tuple)
    load_workers: int = DEFAULT_LOAD_WORKERS
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    max_concurrent_uploads: int = DEFAULT_MAX_CONCURRENT_UPLOADS
    dp_dispatch: str = "affinity"  # or "sglang": SGLang's own --load-balance-method for catalog adapters too
    catalog_cache: str | None = None  # a postgresql:// catalog's engine-local folder (views, blob cache)
    blob_cache_bytes: int = DEFAULT_BLOB_CACHE_BYTES  # that folder's bound on cached S3 blobs
    gateway: str | None = None  # SMG's URL: the server joins it when ready and leaves it when it stops
    advertise_url: str | None = None  # the URL the gateway reaches this server at
    usage_dir: str | None = None  # the usage ledger's folder (usage/ledger.py); None: not kept
    usage_flush_s: float | None = None  # seconds between its appends ($MINT_USAGE_FLUSH_S); None: its default, 2
    grammar_cache_bytes: int = DEFAULT_GRAMMAR_CACHE_BYTES  # grammar_cache.py
    max_sessions: int = DEFAULT_MAX_SESSIONS  # sglang/session_bounds.py
    max_streaming_sessions: int | None = None  # None: a quarter of a scheduler's request slots (session_bounds)
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S
    session_history_tokens: int = DEFAULT_SESSION_HISTORY_TOKENS  # sglang/session_history.py
    max_top_logprobs: int = DEFAULT_MAX_TOP_LOGPROBS  # frontend/request_values.py
    max_stored_responses: int = DEFAULT_MAX_STORED_RESPONSES  # frontend/response_store.py
    stored_responses_bytes: int = DEFAULT_STORED_RESPONSES_BYTES
    max_background_responses: int = DEFAULT_MAX_BACKGROUND_RESPONSES
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES  # frontend/body_limit.py

    @classmethod
    def from_flags(cls, catalog: str | None = None, host_cache: str | None = None,
                   pin: list[str] | None = None, load_workers: int | None = None,
                   max_upload: str | None = None, dp_dispatch: str | None = None,
                   gateway: str | None = None, advertise_url: str | None = None,
                   catalog_cache: str | None = None, blob_cache: str | None = None,
                   max_concurrent_uploads: int | None = None, usage_dir: str | None = None,
                   grammar_cache: str | None = None, max_sessions: int | None = None,
                   session_timeout: float | None = None, max_stored_responses: int | None = None,
                   session_history_tokens: int | None = None, max_top_logprobs: int | None = None,
                   max_streaming_sessions: int | None = None, max_request: str | None = None,
                   stored_responses_bytes: str | None = None,
                   max_background_responses: int | None = None) -> "MintConfig":
        """Validate the flags' values; raise MintError naming the flag at fault."""
        blob_bytes = _size_flag("--mint-blob-cache-bytes", blob_cache, DEFAULT_BLOB_CACHE_BYTES)
        if catalog is None and (catalog_cache is not None or blob_cache is not None):
            raise MintError("--mint-catalog-cache and --mint-blob-cache-bytes need --mint-catalog")
        if catalog is not None:
            from sglang_mint.catalog import open_catalog
            from sglang_mint.catalog.location import parse_location
            from sglang_mint.catalog.opening import create_catalog_hint

            loc = parse_location(catalog)  # a folder or postgresql://...; the password never in messages
            if loc.is_folder:
                catalog = loc.target
                if not os.path.isdir(catalog):
                    raise MintError(f"--mint-catalog {catalog}: no such folder; {create_catalog_hint(catalog)}")
            catalog_cache = os.path.abspath(catalog_cache) if catalog_cache else None
            try:
                open_catalog(catalog, cache_dir=catalog_cache, blob_cache_bytes=blob_bytes).close()
            except MintError as exc:
                raise MintError(f"--mint-catalog {loc.display}: {exc}") from None
        size = _size_flag("--mint-host-cache-bytes", host_cache, DEFAULT_HOST_CACHE_BYTES)
        grammar_bytes = _size_flag("--mint-grammar-cache-bytes", grammar_cache, DEFAULT_GRAMMAR_CACHE_BYTES)
        sessions = _count_flag("--mint-max-sessions", max_sessions, DEFAULT_MAX_SESSIONS, 1_000_000)
        if max_streaming_sessions is not None:
            _count_flag("--mint-max-streaming-sessions", max_streaming_sessions, 0, 1_000_000)
        timeout_s = DEFAULT_SESSION_TIMEOUT_S if session_timeout is None else session_timeout
        if not 0 < timeout_s <= 7 * 86400:
            raise MintError(f"--mint-session-timeout must be above 0 and at most 604800 (7 days), got {timeout_s:g}")
        history = _count_flag("--mint-session-history-tokens", session_history_tokens,
                              DEFAULT_SESSION_HISTORY_TOKENS, 1 << 30)
        top_logprobs = _count_flag("--mint-max-top-logprobs", max_top_logprobs, DEFAULT_MAX_TOP_LOGPROBS, 1 << 20)
        stored = _count_flag("--mint-max-stored-responses", max_stored_responses, DEFAULT_MAX_STORED_RESPONSES,
                             10_000_000)
        stored_bytes = _size_flag("--mint-stored-responses-bytes", stored_responses_bytes,
                                  DEFAULT_STORED_RESPONSES_BYTES)
        background = _count_flag("--mint-max-background-responses", max_background_responses,
                                 DEFAULT_MAX_BACKGROUND_RESPONSES, 1_000_000)
        pinned = []
        for adapter_id in pin or []:
            try:
                pinned.append(validate_adapter_id(adapter_id))
            except MintError as exc:
                raise MintError(f"--mint-pin: {exc}") from None
        workers = _count_flag("--mint-load-workers", load_workers, DEFAULT_LOAD_WORKERS, 64)
        upload = _size_flag("--mint-max-upload-bytes", max_upload, DEFAULT_MAX_UPLOAD_BYTES)
        request_bytes = _size_flag("--mint-max-request-bytes", max_request, DEFAULT_MAX_REQUEST_BYTES)
        uploads = _count_flag("--mint-max-concurrent-uploads", max_concurrent_uploads,
                              DEFAULT_MAX_CONCURRENT_UPLOADS, 64)
        if (host_cache is not None or pin or load_workers is not None or max_upload is not None
                or max_concurrent_uploads is not None) and catalog is None:
            raise MintError("--mint-host-cache-bytes, --mint-pin, --mint-load-workers, --mint-max-upload-bytes "
                            "and --mint-max-concurrent-uploads need --mint-catalog")
        if dp_dispatch not in (None, "affinity", "sglang"):
            raise MintError(f"--mint-dp-dispatch must be affinity or sglang, got {dp_dispatch!r}")
        if advertise_url is not None and gateway is None:
            raise MintError("--mint-advertise-url needs --mint-gateway")
        gateway = check_http_url("--mint-gateway", gateway) if gateway is not None else None
        advertise_url = check_http_url("--mint-advertise-url", advertise_url) if advertise_url is not None else None
        if usage_dir is None:
            usage_dir = str(default_cache_dir() / "usage")
        usage_dir = None if usage_dir.lower() == "off" else os.path.abspath(usage_dir)
        flush_s = usage_flush_s() if usage_dir is not None else None  # refused here, before a scheduler starts
        return cls(catalog=catalog, host_cache_bytes=size, pinned=tuple(pinned), load_workers=workers,
                   max_upload_bytes=upload, max_concurrent_uploads=uploads,
                   dp_dispatch=dp_dispatch or "affinity", gateway=gateway,
                   advertise_url=advertise_url, catalog_cache=catalog_cache, blob_cache_bytes=blob_bytes,
                   usage_dir=usage_dir, usage_flush_s=flush_s, grammar_cache_bytes=grammar_bytes,
                   max_sessions=sessions, max_streaming_sessions=max_streaming_sessions, session_timeout_s=timeout_s, session_history_tokens=history,
                   max_stored_responses=stored, max_top_logprobs=top_logprobs, max_request_bytes=request_bytes,
                   stored_responses_bytes=stored_bytes, max_background_responses=background)

    def open_catalog(self):
        """The catalog as a serving process holds it: a small SQLite page cache per thread (see
        SERVING_CACHE_KIB), and for a postgresql:// catalog this engine's local folder."""
        from sglang_mint.catalog import open_catalog
        from sglang_mint.catalog.opening import SERVING_CACHE_KIB

        return open_catalog(self.catalog, cache_kib=SERVING_CACHE_KIB, cache_dir=self.catalog_cache,
                            blob_cache_bytes=self.blob_cache_bytes)


def usage_flush_s() -> float | None:
    """``$MINT_USAGE_FLUSH_S``: seconds between the usage ledger's appends; None when unset (the
    ledger's 2 s). Fewer appends cost a crash more counts; a stop costs none. MintError naming a bad value."""
    text = os.environ.get("MINT_USAGE_FLUSH_S", "")
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 0 < seconds <= 86400):  # 1e300: the ledger's thread died on its wait
        raise MintError(f"MINT_USAGE_FLUSH_S={text!r}: expected seconds above 0 and at most a day (86400), e.g. 2")
    return seconds


def check_http_url(flag: str, url: str) -> str:
    """``http://10.0.0.9:30080/`` -> ``http://10.0.0.9:30080``; MintError naming ``flag`` if not an http(s) URL."""
    from urllib.parse import urlsplit

    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
        raise MintError(f"{flag} {url!r}: expected http://host:port (no path)")
    try:
        parts.port
    except ValueError:
        raise MintError(f"{flag} {url!r}: the port is not a number from 0 to 65535") from None
    return f"{parts.scheme}://{parts.netloc}"


def default_cache_dir() -> Path:
    """Where sglang-mint keeps what it builds once: $MINT_CACHE_DIR, else ~/.cache/sglang-mint."""
    root = os.environ.get("MINT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "sglang-mint"
    )
    return Path(root)


def config_from_args(args: argparse.Namespace, *, lora_on: bool, pp_size: int, tokenizer_workers: int,
                     model_path: str, tenant_unsafe: tuple[tuple[str, str], ...] = ()) -> MintConfig | None:
    """The parsed flags -> MintConfig, or None without ``--enable-mint``; MintError naming the flag at fault.

    The engine settings the plugin depends on come as arguments: ``lora_on`` (SGLang's
    ``--enable-lora`` or ``--lora-paths``), ``pp_size`` (``--pp-size``), ``tokenizer_workers``
    (``--tokenizer-worker-num``), ``model_path``, whose base model the catalog must be made for, and
    ``tenant_unsafe``: (setting, why) for each SGLang setting in effect that would let one tenant past the
    rules that keep it from the others (``sglang/flags.py:tenant_unsafe_settings``).
    """
    catalog = getattr(args, "mint_catalog", None)
    flags = {
        "host_cache": getattr(args, "mint_host_cache_bytes", None),
        "pin": getattr(args, "mint_pin", None),
        "load_workers": getattr(args, "mint_load_workers", None),
        "max_upload": getattr(args, "mint_max_upload_bytes", None),
        "max_concurrent_uploads": getattr(args, "mint_max_concurrent_uploads", None),
        "dp_dispatch": getattr(args, "mint_dp_dispatch", None),
        "gateway": getattr(args, "mint_gateway", None),
        "advertise_url": getattr(args, "mint_advertise_url", None),
        "catalog_cache": getattr(args, "mint_catalog_cache", None),
        "blob_cache": getattr(args, "mint_blob_cache_bytes", None),
        "usage_dir": getattr(args, "mint_usage_dir", None),
        "grammar_cache": getattr(args, "mint_grammar_cache_bytes", None),
        "max_sessions": getattr(args, "mint_max_sessions", None),
        "max_streaming_sessions": getattr(args, "mint_max_streaming_sessions", None),
        "session_timeout": getattr(args, "mint_session_timeout", None),
        "max_stored_responses": getattr(args, "mint_max_stored_responses", None),
        "stored_responses_bytes": getattr(args, "mint_stored_responses_bytes", None),
        "max_background_responses": getattr(args, "mint_max_background_responses", None),
        "max_request": getattr(args, "mint_max_request_bytes", None),
        "session_history_tokens": getattr(args, "mint_session_history_tokens", None),
        "max_top_logprobs": getattr(args, "mint_max_top_logprobs", None),
    }
    if not getattr(args, "enable_mint", False):
        if catalog is not None or any(v is not None for v in flags.values()):
            raise MintError("--mint-catalog and the other --mint-* flags require --enable-mint")
        return None
    if not lora_on:
        raise MintError("--enable-mint needs LoRA on: add --enable-lora (or --lora-paths)")
    if catalog is not None and pp_size > 1:
        # Pipeline stages hold different layers: each would read and agree on its own part of an
        # adapter, which is not built (tensor and data parallelism are, see residency/rank_agreement.py).
        raise MintError(f"--mint-catalog does not support pipeline parallelism yet, got --pp-size {pp_size}")
    if tokenizer_workers > 1:
        # SGLang's extra tokenizer workers are spawned without loading plugins, so a bare adapter
        # id would silently serve the base model there.
        raise MintError(f"--enable-mint serves with one tokenizer manager; got --tokenizer-worker-num "
                        f"{tokenizer_workers} (SGLang does not load plugins into extra tokenizer workers)")
    if tenant_unsafe:
        raise MintError("--enable-mint serves many tenants, and SGLang's " + "; ".join(
            f"{setting} {why}" for setting, why in tenant_unsafe) + "; leave it out")
    config = MintConfig.from_flags(catalog=catalog, **flags)
    if catalog is not None:
        check_catalog_serves(config, model_path)
    return config


def check_catalog_serves(config: MintConfig, model_path: str) -> None:
    """Refuse a catalog made for another base model than the one being served.

    Both sides are compared by identity (architecture and every shape-relevant size, see
    ``catalog.base``). A model given as a hub id, not a local folder, cannot be read here
    without the network; its adapters are still checked one by one as they load.
    """
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
    # which layers route to experts is outside the identity (first_k_dense_replace, moe_layer_freq): every
    # adapter was checked against the record's layout
    if None not in (base.moe_layers, served.moe_layers) and base.moe_layers != served.moe_layers:
        raise MintError(f"--mint-catalog {shown} was made for base model {base.name!r}, which routes to experts on "
                        f"layers {list(base.moe_layers)}, but {model_path!r} does on {list(served.moe_layers)}; "
                        "its adapters were checked against the other layout")
