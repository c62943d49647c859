"""Where a catalog lives, from the one string users give: a folder or a PostgreSQL URL.

    /data/catalog                          SQLite + blobs inside the folder (the default)
    postgresql://mint@db:5432/catalog      PostgreSQL metadata; the blob store named in
                                           the catalog's settings at init (s3://bucket/prefix
                                           or a shared folder), so engines need only the URL

A PostgreSQL catalog keeps engine-local files (views/, the blob cache) in a
local folder: ``--mint-catalog-cache DIR`` / ``$MINT_CATALOG_CACHE``, else
``$MINT_CACHE_DIR/catalogs/<16 hex>`` (``~/.cache/sglang-mint`` by default),
where the hex is the sha256 of the URL without its password: the same catalog
URL gives the same folder whatever the password.

Passwords never appear in messages: ``display`` is the URL with the password
replaced by ``***``, and ``redact`` hides it in a driver's message in both
spellings (``p%40ss`` in the URL is ``p@ss`` to libpq). (A password is better
kept out of the URL altogether: libpq reads ``PGPASSWORD`` and a ``PGPASSFILE``
(``pgpass_entry`` writes its line), and a URL on a command line is visible in ``ps``.)
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

from sglang_mint.catalog.errors import CatalogError

POSTGRES_SCHEMES = ("postgresql", "postgres")
CACHE_ENV = "MINT_CATALOG_CACHE"


def _split_password(url: str) -> tuple[str, str, str | None]:
    """(url with '***' for the password, url without the password, the password or None)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url, url, None
    user, _, host = parts.netloc.rpartition("@")
    name = user.split(":", 1)[0]
    shown = urlunsplit(parts._replace(netloc=f"{name}:***@{host}"))
    bare = urlunsplit(parts._replace(netloc=f"{name}@{host}"))
    return shown, bare, parts.password


def without_password(url: str) -> str:
    """``url`` with no password, e.g. postgresql://mint@db:5432/catalog, for libpq to find it in
    ``PGPASSWORD`` or a ``PGPASSFILE`` instead: nothing secret on a command line."""
    return _split_password(url)[1]


def redact(text: str, url: str) -> str:
    """``text`` with ``url``'s password replaced by ***: for error messages that quote a URL or a driver.

    Both spellings go: as written in the URL (``p%40ss``) and as the server sees it (``p@ss``)."""
    _, _, password = _split_password(url)
    if not password:
        return text
    for spelling in sorted({password, unquote(password)}, key=len, reverse=True):
        text = text.replace(spelling, "***")
    return text


def pgpass_entry(url: str) -> str:
    """The ``PGPASSFILE`` line that gives libpq ``url``'s password, for any database on its host and port.

    Example: postgresql://postgres:p%3Aw@127.0.0.1:5432/mint -> ``127.0.0.1:5432:*:postgres:p\\:w``
    (':' and '\\' escaped, as libpq reads them). The file must be mode 0600 or libpq ignores it."""
    parts = urlsplit(url)
    if parts.password is None:
        raise CatalogError(f"{_split_password(url)[0]} carries no password to put in a password file")

    def field(value: str) -> str:
        return value.replace("\\", "\\\\").replace(":", "\\:")

    return ":".join([field(parts.hostname or "localhost"), str(parts.port or 5432), "*",
                     field(unquote(parts.username or "")), field(unquote(parts.password))])


@dataclass(frozen=True)
class CatalogLocation:
    kind: str  # "folder" or "postgres"
    target: str  # the folder (absolute) or the URL as given, password included
    display: str  # what messages show: the folder, or the URL with *** for the password

    @property
    def is_folder(self) -> bool:
        return self.kind == "folder"

    def cache_dir(self, override: str | None = None) -> str:
        """The engine-local folder of a PostgreSQL catalog (views/, blob cache), see the module doc."""
        if self.is_folder:
            return self.target
        chosen = override or os.environ.get(CACHE_ENV)
        if chosen:
            return os.path.abspath(chosen)
        _, bare, _ = _split_password(self.target)
        root = os.environ.get("MINT_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "sglang-mint")
        return os.path.join(root, "catalogs", hashlib.sha256(bare.encode()).hexdigest()[:16])


def parse_location(target: str) -> CatalogLocation:
    """A catalog folder (a str or a Path) or ``postgresql://...``; CatalogError for another URL scheme."""
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise CatalogError("a catalog is a folder or a postgresql:// URL, got nothing")
    scheme = target.split("://", 1)[0].lower() if "://" in target else ""
    if scheme in POSTGRES_SCHEMES:
        shown, _, _ = _split_password(target)
        if not urlsplit(target).path.strip("/"):
            raise CatalogError(f"catalog URL {shown} names no database; add one, e.g. "
                               "postgresql://user@host:5432/catalog")
        return CatalogLocation("postgres", target, shown)
    if scheme:
        raise CatalogError(f"catalog {_split_password(target)[0]!r}: unknown scheme {scheme!r}; a catalog is a "
                           "folder or a postgresql://user@host:port/db URL")
    path = os.path.abspath(target)
    return CatalogLocation("folder", path, target)


@dataclass(frozen=True)
class BlobLocation:
    kind: str  # "folder" or "s3"
    target: str  # an absolute folder, or s3://bucket/prefix


def parse_blobs(blobs: str) -> BlobLocation:
    """``--blobs`` of a PostgreSQL catalog: ``s3://bucket/prefix`` or a folder every engine mounts."""
    if not blobs:
        raise CatalogError("--blobs is empty; give s3://bucket/prefix or a shared folder")
    if blobs.startswith("s3://"):
        parts = urlsplit(blobs)
        if not parts.netloc:
            raise CatalogError(f"--blobs {blobs!r} names no bucket; use s3://bucket/prefix")
        return BlobLocation("s3", blobs.rstrip("/"))
    if "://" in blobs:
        raise CatalogError(f"--blobs {blobs!r}: only s3://bucket/prefix or a shared folder is supported")
    return BlobLocation("folder", os.path.abspath(blobs))
