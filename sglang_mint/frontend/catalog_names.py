"""Which adapter a request names: the catalog first, then the adapters the engine loaded itself.

Every way a request names an adapter goes through the catalog:

- ``model="acme/bot"`` (``lora_path_of_model``) and ``lora_path="acme/bot"``
  resolve the adapter's current revision at arrival (one indexed lookup) and
  become the LoRA name ``acme/bot@3``; the request is served by that revision
  even if a publish lands while it runs.
- ``lora_path="acme/bot@3"`` is served only if revision 3 exists and the
  adapter is not deleted; anything else is a 404 naming it (a malformed name
  a 400). Adapters from ``--lora-paths`` or ``/load_lora_adapter`` pass as in
  stock SGLang.

The catalog is the authority for the names it holds: a name is looked up in
the catalog first and only a name the catalog does not hold falls back to the
adapters the engine loaded itself (``stock``: SGLang's ``tm.lora_ref_cache``).
So an adapter loaded as ``late/x`` stops being served under that name once the
catalog publishes ``late/x``, and ``/load_lora_adapter`` (or ``_from_tensors``)
under a name the catalog holds, or under any ``<id>@<revision>`` name (the
catalog's revision names), is refused with 409 naming the id
(``CatalogNameTaken``); so is ``/unload_lora_adapter`` of a catalog name the
engine did not load itself.

A revision name stays registered with the engine only while a request uses it
(``may_forget``): a request between its resolve here and the engine's acquire of
the name is ``arriving`` and keeps it.
"""

from __future__ import annotations

import logging
from typing import Container, Mapping

from fastapi import HTTPException
from fastapi.responses import ORJSONResponse

from sglang_mint.catalog.ids import parse_revision_name, validate_adapter_id
from sglang_mint.errors import AdapterNotFound, MintError
from sglang_mint.lora_id import RevisionName, lora_name_of
from sglang_mint.routing import adapter_from_model

logger = logging.getLogger("sglang_mint")


class CatalogNameTaken(MintError):
    """A stock load or unload under a name the catalog holds (answered 409 by ``catalog_name_taken``)."""

    http_status = 409


async def catalog_name_taken(request, exc: CatalogNameTaken) -> ORJSONResponse:
    """A stock ``/load_lora_adapter`` (or ``_from_tensors``, ``/unload_lora_adapter``) under a name the
    catalog holds: 409, in the shape those endpoints answer in (``success``, ``error_message``)."""
    return ORJSONResponse({"success": False, "error_message": str(exc)}, status_code=exc.http_status)


class RevisionNotServable(AdapterNotFound):
    """A revision published with durable=false whose weights this server does not hold (404)."""


class CatalogNames:
    """The frontend's view of the catalog: requested names -> revision names, with their counters.

    ``metrics`` has two counters, ``resolves`` and ``not_found`` (``.inc()``).
    """

    def __init__(self, catalog, metrics, staged=None):
        self.catalog = catalog
        self.staged = staged  # StagedRevisions: revisions published with durable=false, served from memory
        self.resolves = 0
        self.metrics = metrics
        # Revision names between their resolve here and the engine's acquire of them: never dropped.
        self._arriving: dict[str, int] = {}

    def lora_name(self, adapter_id: str) -> str:
        """The LoRA name of the adapter's current revision; AdapterNotFound if unknown or deleted."""
        return self.checked_name(adapter_id)

    def checked_name(self, name: str, stock: Container[str] = ()) -> RevisionName | None:
        """A requested name -> the revision it selects in the catalog, as its revision name with
        the record attached (``"acme/bot"`` -> ``"acme/bot@3"``, ``"acme/bot@2"`` checked and
        kept): one catalog query, none for a name this request resolved already. None if the
        catalog does not hold it but ``stock`` (the adapters the engine loaded itself) does;
        else MintError (404 unknown or deleted, 400 malformed)."""
        if isinstance(name, RevisionName):
            return name
        try:
            if "@" not in name:
                rev = self.catalog.resolve(name)
            else:
                rev = self.catalog.resolve_revision(*parse_revision_name(name))
        except MintError:
            if name in stock:
                return None
            self.metrics.not_found.inc()
            raise
        self.resolves += 1
        self.metrics.resolves.inc()
        return RevisionName(self._servable(rev, pinned="@" in name))

    def _servable(self, rev, pinned: bool):
        """The record that serves ``rev``: the staged one when this frontend holds its files in
        memory, ``rev`` itself when durable; else (a durable=false revision another process holds,
        or lost to a restart) the latest durable revision before it, or 404 for ``id@N``."""
        staged = self.staged.get(rev.adapter_id, rev.revision) if self.staged is not None else None
        if staged is not None:
            return staged
        if rev.durable:
            return rev
        why = (f"revision {rev.revision} of {rev.adapter_id!r} was published with durable=false and its weights "
               "are not stored: the server that received them stopped first, is storing them now, or "
               "did not store them because a newer durable=false revision superseded it")
        older = None if pinned else self.catalog.latest_durable(rev.adapter_id, rev.revision)
        if older is None:
            raise RevisionNotServable(f"{why}; publish it again")
        return older

    def holder(self, name) -> str | None:
        """The catalog id whose name ``name`` is, or None: ``"acme/bot"`` if the catalog holds
        that adapter, ``"acme/bot"`` for every ``"acme/bot@N"`` (revision names are the
        catalog's, held or not), None for anything else."""
        if not isinstance(name, str):
            return None
        try:
            if "@" in name:
                return parse_revision_name(name)[0]
            self.catalog.resolve(validate_adapter_id(name))
        except MintError:
            return None
        return name

    def resolve_lora_path(self, paths, stock: Container[str], batch: int | None = None
                          ) -> tuple[object, list[RevisionName]]:
        """A request's ``lora_path`` (one name, a list of them, or None) -> (the same with every
        catalog name replaced by its revision name, the distinct revision names), which are then
        arriving until ``settle``. ``["acme/bot", None, "mine", "acme/bot"]`` -> ``(["acme/bot@3",
        None, "mine", "acme/bot@3"], ["acme/bot@3"])`` when ``mine`` is in ``stock``: one lookup per
        distinct name, however often the list repeats it. ``batch``, the request's number of
        prompts as the engine counts them: a longer list is refused before any lookup, so
        ``["acme/bot"] * 200000`` for one prompt costs nothing. Raises HTTPException 400/404
        naming the field and the bad entry."""
        single = isinstance(paths, str)
        entries = [paths] if single else list(paths or [])
        if not single and batch is not None and len(entries) > batch:
            raise HTTPException(status_code=400, detail=f"lora_path: a list of {len(entries)} entries for a request "
                                                        f"of {batch} prompt(s); give at most one per prompt")
        odd = next((entry for entry in entries if entry and not isinstance(entry, str)), None)
        if odd is not None:
            raise HTTPException(status_code=400, detail=f"lora_path: {odd!r} is not an adapter name")
        resolved: dict[str, RevisionName] = {}  # requested name -> its revision name, catalog names only
        for entry in dict.fromkeys(entry for entry in entries if entry):  # None or "": the base model
            try:
                name = self.checked_name(entry, stock)
            except MintError as exc:
                raise HTTPException(status_code=exc.http_status, detail=f"lora_path: {exc}") from None
            if name is not None:  # None: an adapter the engine loaded itself, a name the catalog does not hold
                resolved[entry] = name
        names = list(dict.fromkeys(resolved.values()))  # "acme/bot" and "acme/bot@3" select one revision
        for name in names:
            self._arriving[name] = self._arriving.get(name, 0) + 1
        if not names:
            return paths, names
        entries = [resolved.get(entry, entry) if entry else entry for entry in entries]
        return (entries[0] if single else entries), names

    def settle(self, names: list[str]) -> None:
        """The engine has acquired ``names`` (from ``resolve_lora_path``): they are no longer arriving."""
        for name in names:
            n = self._arriving[name] - 1
            if n:
                self._arriving[name] = n
            else:
                del self._arriving[name]

    def may_forget(self, lora_id: str, in_use: int) -> bool:
        """Whether the engine may drop the revision name of ``lora_id`` now: no request holds it
        (``in_use``, the engine's count) and none is arriving for it."""
        return in_use == 0 and lora_name_of(lora_id) not in self._arriving

    def warn_shadowed(self, stock_paths: Mapping[str, str]) -> None:
        """Log every adapter the engine was launched with (``--lora-paths``: name -> path) whose name
        the catalog holds: requests for that name are served from the catalog."""
        for name, path in stock_paths.items():
            if self.holder(name) is not None:
                logger.warning("--lora-paths adapter %r has a name the catalog holds: requests for %r are served "
                               "from the catalog, not from %s", name, name, path)

    def load_refusal(self, name: str, reloading: bool) -> CatalogNameTaken | None:
        """Why a stock load under ``name`` is refused, or None. ``reloading``: the engine loaded this
        name from this same path before (and unloaded it since), which is not a new claim on it."""
        adapter_id = self.holder(name)
        if adapter_id is None or reloading:
            return None
        return CatalogNameTaken(
            f"{_names_of(name, adapter_id)}, which this server serves from the catalog; load this adapter "
            f"under another name, or publish it as a new revision: POST /mint/adapters/{adapter_id}/revisions")

    def unload_refusal(self, name: str, loaded: bool) -> CatalogNameTaken | None:
        """Why a stock unload of ``name`` is refused (a catalog name the engine did not load), or None."""
        adapter_id = self.holder(name)
        if adapter_id is None or loaded:
            return None
        return CatalogNameTaken(
            f"{_names_of(name, adapter_id)}: the server loads and evicts catalog adapters itself; roll "
            "back or delete the adapter in the catalog instead")


def _names_of(name: str, adapter_id: str) -> str:
    if name == adapter_id:
        return f"lora_name {name!r} is the id of catalog adapter {adapter_id!r} (--mint-catalog)"
    return (f"lora_name {name!r} is a revision name of catalog adapter {adapter_id!r} (--mint-catalog keeps every "
            "<adapter-id>@<revision> name for the catalog)")


def lora_path_of_model(model: str, served_name: str, explicit_lora_path, names: CatalogNames | None,
                       stock: Container[str]):
    """The OpenAI ``model`` field -> the request's ``lora_path``.

    The served name is the base model (``explicit_lora_path`` is kept); ``<served>:<id>`` and the
    bare ``<id>`` select adapter ``id``: its revision name when the catalog (``names``) holds it,
    the id itself when only ``stock`` does. A malformed id is a 400 and an id nobody knows a 404,
    both HTTPException naming the id.
    """
    try:
        adapter_id = adapter_from_model(model, served_name)
        if adapter_id is None:
            return explicit_lora_path
        if names is not None:
            # the catalog's revision name; None: not in the catalog but in stock
            return names.checked_name(adapter_id, stock) or adapter_id
        if adapter_id in stock:  # an adapter from --lora-paths or /load_lora_adapter
            return adapter_id
        raise AdapterNotFound(f"adapter {adapter_id!r} not found: no adapter with this id is known to the server")
    except MintError as exc:
        raise HTTPException(status_code=exc.http_status, detail=str(exc)) from None

