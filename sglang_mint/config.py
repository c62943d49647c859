"""The plugin's settings, as given by the ``--mint-*`` launch flags.

Engine-agnostic: the SGLang glue parses the flags into a ``MintConfig`` and
attaches it to the server arguments, which SGLang hands to every process.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sglang_mint.catalog.catalog import DEFAULT_BLOB_CACHE_BYTES
from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.errors import MintError

DEFAULT_HOST_CACHE_BYTES = 4 << 30
DEFAULT_LOAD_WORKERS = 2
# The largest adapter upload (POST /mint/adapters/{id}/revisions) a server reads. A rank-64 bf16
# LoRA on every dense module of a 70B model is about 1.6 GB; MoE-expert LoRA can be far larger.
DEFAULT_MAX_UPLOAD_BYTES = 4 << 30
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

    @classmethod
    def from_flags(cls, catalog: str | None = None, host_cache: str | None = None,
                   pin: list[str] | None = None, load_workers: int | None = None,
                   max_upload: str | None = None, dp_dispatch: str | None = None,
                   gateway: str | None = None, advertise_url: str | None = None,
                   catalog_cache: str | None = None, blob_cache: str | None = None,
                   max_concurrent_uploads: int | None = None) -> "MintConfig":
        """Validate the flags' values; raise MintError naming the flag at fault."""
        try:
            blob_bytes = parse_bytes(blob_cache) if blob_cache is not None else DEFAULT_BLOB_CACHE_BYTES
        except MintError as exc:
            raise MintError(f"--mint-blob-cache-bytes: {exc}") from None
        if catalog is None and (catalog_cache is not None or blob_cache is not None):
            raise MintError("--mint-catalog-cache and --mint-blob-cache-bytes need --mint-catalog")
        if catalog is not None:
            from sglang_mint.catalog import open_catalog
            from sglang_mint.catalog.location import parse_location

            loc = parse_location(catalog)  # a folder or postgresql://...; the password never in messages
            if loc.is_folder:
                catalog = loc.target
                if not os.path.isdir(catalog):
                    raise MintError(f"--mint-catalog {catalog}: no such folder")
            catalog_cache = os.path.abspath(catalog_cache) if catalog_cache else None
            try:
                open_catalog(catalog, cache_dir=catalog_cache, blob_cache_bytes=blob_bytes).close()
            except MintError as exc:
                raise MintError(f"--mint-catalog {loc.display}: {exc}") from None
        try:
            size = parse_bytes(host_cache) if host_cache is not None else DEFAULT_HOST_CACHE_BYTES
        except MintError as exc:
            raise MintError(f"--mint-host-cache-bytes: {exc}") from None
        pinned = []
        for adapter_id in pin or []:
            try:
                pinned.append(validate_adapter_id(adapter_id))
            except MintError as exc:
                raise MintError(f"--mint-pin: {exc}") from None
        workers = DEFAULT_LOAD_WORKERS if load_workers is None else load_workers
        if not 1 <= workers <= 64:
            raise MintError(f"--mint-load-workers must be 1 to 64, got {workers}")
        try:
            upload = parse_bytes(max_upload) if max_upload is not None else DEFAULT_MAX_UPLOAD_BYTES
        except MintError as exc:
            raise MintError(f"--mint-max-upload-bytes: {exc}") from None
        uploads = DEFAULT_MAX_CONCURRENT_UPLOADS if max_concurrent_uploads is None else max_concurrent_uploads
        if not 1 <= uploads <= 64:
            raise MintError(f"--mint-max-concurrent-uploads must be 1 to 64, got {uploads}")
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
        return cls(catalog=catalog, host_cache_bytes=size, pinned=tuple(pinned), load_workers=workers,
                   max_upload_bytes=upload, max_concurrent_uploads=uploads,
                   dp_dispatch=dp_dispatch or "affinity", gateway=gateway,
                   advertise_url=advertise_url, catalog_cache=catalog_cache, blob_cache_bytes=blob_bytes)

    def open_catalog(self):
        """The catalog as a serving process holds it: a small SQLite page cache per thread (see
        SERVING_CACHE_KIB), and for a postgresql:// catalog this engine's local folder."""
        from sglang_mint.catalog import open_catalog
        from sglang_mint.catalog.catalog import SERVING_CACHE_KIB

        return open_catalog(self.catalog, cache_kib=SERVING_CACHE_KIB, cache_dir=self.catalog_cache,
                            blob_cache_bytes=self.blob_cache_bytes)


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
