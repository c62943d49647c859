"""Catalog adapters in the tokenizer manager (the ``/mint/*`` endpoints are endpoints.py).

Every way a request names an adapter goes through the catalog:

- ``model="acme/bot"`` (``openai_model.py``) and ``lora_path="acme/bot"``
  resolve the adapter's current revision at arrival (one indexed lookup) and
  become the LoRA name ``acme/bot@3``; the request is served by that revision
  even if a publish lands while it runs.
- ``lora_path="acme/bot@3"`` is served only if revision 3 exists and the
  adapter is not deleted; anything else is a 404 naming it (a malformed name
  a 400). Adapters from ``--lora-paths`` or ``/load_lora_adapter`` pass as in
  stock SGLang.

The catalog is the authority for the names it holds: a name is looked up in
the catalog first and only a name the catalog does not hold falls back to the
adapters SGLang loaded itself (``tm.lora_ref_cache``). So an adapter loaded as
``late/x`` stops being served under that name once the catalog publishes
``late/x``, and ``/load_lora_adapter`` (or ``_from_tensors``) under a name the
catalog holds, or under any ``<id>@<revision>`` name (the catalog's revision
names), is refused with 409 naming the id (``CatalogNameTaken``); so is
``/unload_lora_adapter`` of a catalog name SGLang did not load itself.

A revision name is registered in SGLang's LoRA registry with ``lora_id =
"mint:acme/bot@3"`` and no load request: the scheduler loads it in the
background (``residency.py``). It stays registered only while a request uses
it: when SGLang releases the last one (``LoRARegistry.release``), the name and
its counter are dropped, so the registry holds the names in flight, not every
name ever seen.
"""

from __future__ import annotations

import asyncio
import logging

from fastapi import HTTPException
from sglang.srt.lora.lora_registry import LoRARef

from sglang_mint.catalog.ids import parse_revision_name, validate_adapter_id
from sglang_mint.errors import MintError
from sglang_mint.lora_id import CatalogLoraId, RevisionName, is_catalog_lora_id, lora_name_of
from sglang_mint.sglang.flags import mint_config

logger = logging.getLogger("sglang_mint")


class CatalogNameTaken(MintError):
    """A stock load or unload under a name the catalog holds (endpoints.py answers it with 409)."""

    http_status = 409


class CatalogFrontend:
    """The tokenizer manager's view of the catalog."""

    def __init__(self, config):
        self.catalog = config.open_catalog()
        self.resolves = 0
        from sglang_mint.sglang.metrics import FrontendMetrics, metrics_enabled

        self.metrics = FrontendMetrics(metrics_enabled())
        self._warming: set[asyncio.Task] = set()
        # Revision names between our registration and SGLang's acquire of them: never dropped.
        self._arriving: dict[str, int] = {}

    def lora_name(self, adapter_id: str) -> str:
        """The LoRA name of the adapter's current revision; AdapterNotFound if unknown or deleted."""
        return self.checked_name(adapter_id)

    def checked_name(self, name: str, stock=()) -> RevisionName | None:
        """A requested name -> the revision it selects in the catalog, as its revision name with
        the record attached (``"acme/bot"`` -> ``"acme/bot@3"``, ``"acme/bot@2"`` checked and
        kept): one catalog query, none for a name this request resolved already. None if the
        catalog does not hold it but ``stock`` (the adapters SGLang loaded itself:
        ``tm.lora_ref_cache``) does; else MintError (404 unknown or deleted, 400 malformed)."""
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
        return RevisionName(rev)

    @staticmethod
    def lora_id_of(name: RevisionName) -> str:
        """The LoRA id ``name`` is registered under: a CatalogLoraId, which carries the revision's
        record to the scheduler (sglang_mint/lora_id.py) inside SGLang's pickled requests. With
        SGLANG_USE_PICKLE_IPC=0 SGLang sends msgpack, which takes plain strings only: then the
        id is the plain string and the scheduler looks the revision up itself (one query per
        cold read)."""
        from sglang.srt.environ import envs

        if envs.SGLANG_USE_PICKLE_IPC.get():
            return CatalogLoraId(name.revision)
        return str(CatalogLoraId(name.revision))

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

    async def arrive(self, tm, obj) -> list[str]:
        """Resolve the request's ``lora_path`` through the catalog and register what it names.

        Rewrites ``obj.lora_path`` in place (a bare id becomes its current revision) and
        returns the revision names registered, which the caller passes to ``settle`` once
        SGLang has acquired them. Raises HTTPException 400/404 naming the bad entry.
        """
        paths = obj.lora_path
        single = isinstance(paths, str)
        entries = [paths] if single else list(paths or [])
        names: list[RevisionName] = []
        for i, entry in enumerate(entries):
            if not entry:
                continue  # the base model
            try:
                name = self.checked_name(entry, tm.lora_ref_cache)
            except MintError as exc:
                raise HTTPException(status_code=exc.http_status, detail=f"lora_path: {exc}") from None
            if name is None:
                continue  # an adapter SGLang loaded itself, under a name the catalog does not hold
            entries[i] = name
            names.append(name)
        if names:
            obj.lora_path = entries[0] if single else entries
        for name in names:
            self._arriving[name] = self._arriving.get(name, 0) + 1
        for name in dict.fromkeys(names):
            if name not in tm.lora_registry._registry:
                ref = LoRARef(lora_id=self.lora_id_of(name), lora_name=str(name),
                              lora_path=f"mint-catalog:{name}", pinned=False)
                try:
                    await tm.lora_registry.register(ref)
                except ValueError:
                    pass  # another request registered it first
        return names

    def settle(self, names: list[str]) -> None:
        for name in names:
            n = self._arriving[name] - 1
            if n:
                self._arriving[name] = n
            else:
                del self._arriving[name]

    def forget_if_idle(self, registry, lora_id: str) -> None:
        """Drop a revision name from SGLang's registry once no request uses it.

        Runs on the event loop with no await between the checks and the deletes, so no
        request can acquire the name halfway: one that is arriving is in ``_arriving``.
        """
        name = lora_name_of(lora_id)
        counter = registry._counters.get(lora_id)
        if counter is None or counter.value() != 0 or name in self._arriving:
            return
        ref = registry._registry.get(name)
        if ref is not None and ref.lora_id == lora_id:
            del registry._registry[name]
        del registry._counters[lora_id]

    def warm(self, tm, lora_name: str) -> None:
        """Load an adapter ahead of traffic: a one-token request for it, not awaited.

        It takes the path a real request takes (registration, arrival at each
        scheduler, background read, install), so nothing else has to know about
        prefetching; the cost is one token of compute per adapter.
        """
        task = asyncio.get_running_loop().create_task(self._warm(tm, lora_name))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, tm, lora_name: str) -> None:
        from sglang.srt.managers.io_struct import GenerateReqInput

        obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0},
                               lora_path=lora_name)
        try:
            async for _ in tm.generate_request(obj, None):
                pass
        except Exception as exc:  # the adapter's own requests will report it
            logger.warning("prefetch of %s failed: %s", lora_name, exc)


def catalog_frontend(tokenizer_manager) -> CatalogFrontend | None:
    return getattr(tokenizer_manager, "_mint_frontend", None)


def _after_init_lora(result, tm, *args, **kwargs):
    config = mint_config(tm.server_args)
    if config is None:
        return result
    from sglang_mint.sglang import hooks

    hooks.verify_applied("frontend")
    if config.catalog is not None:
        frontend = tm._mint_frontend = tm.lora_registry._mint_frontend = CatalogFrontend(config)
        for name in tm.lora_ref_cache:  # --lora-paths
            if frontend.holder(name) is not None:
                logger.warning("--lora-paths adapter %r has a name the catalog holds: requests for %r are served "
                               "from the catalog, not from %s", name, name, tm.lora_ref_cache[name].lora_path)
    return result


def _names_of(name: str, adapter_id: str) -> str:
    if name == adapter_id:
        return f"lora_name {name!r} is the id of catalog adapter {adapter_id!r} (--mint-catalog)"
    return (f"lora_name {name!r} is a revision name of catalog adapter {adapter_id!r} (--mint-catalog keeps every "
            "<adapter-id>@<revision> name for the catalog)")


async def _around_load_lora_adapter(original, tm, obj, *args, **kwargs):
    """TokenizerManager.load_lora_adapter and load_lora_adapter_from_tensors: refuse a catalog name."""
    frontend = catalog_frontend(tm)
    adapter_id = None if frontend is None else frontend.holder(obj.lora_name)
    known = tm.lora_ref_cache.get(obj.lora_name) if frontend is not None else None
    # SGLang itself reloads an adapter it loaded before under the same name and path (after an
    # unload); that is not a new claim on the name.
    if adapter_id is not None and not (known is not None and known.lora_path == getattr(obj, "lora_path", None)):
        raise CatalogNameTaken(
            f"{_names_of(obj.lora_name, adapter_id)}, which this server serves from the catalog; load this adapter "
            f"under another name, or publish it as a new revision: POST /mint/adapters/{adapter_id}/revisions")
    return await original(tm, obj, *args, **kwargs)


async def _around_unload_lora_adapter(original, tm, obj, *args, **kwargs):
    frontend = catalog_frontend(tm)
    adapter_id = None if frontend is None else frontend.holder(obj.lora_name)
    if adapter_id is not None and obj.lora_name not in tm.lora_ref_cache:
        raise CatalogNameTaken(
            f"{_names_of(obj.lora_name, adapter_id)}: the server loads and evicts catalog adapters itself; roll "
            "back or delete the adapter in the catalog instead")
    return await original(tm, obj, *args, **kwargs)


async def _around_tm_resolve_lora_path(original, tm, obj):
    frontend = catalog_frontend(tm)
    if frontend is None or not obj.lora_path:
        return await original(tm, obj)
    names = await frontend.arrive(tm, obj)
    try:
        return await original(tm, obj)
    finally:
        frontend.settle(names)


async def _around_registry_release(original, registry, lora_id):
    frontend: CatalogFrontend | None = getattr(registry, "_mint_frontend", None)
    if frontend is not None and lora_id is None:
        # A request refused while its lora_path was resolved (an unknown id: 404) acquired nothing,
        # but SGLang's cleanup still releases its lora_id, None, which raises TypeError in a stray task.
        return
    await original(registry, lora_id)
    if frontend is None:
        return
    for one in [lora_id] if isinstance(lora_id, str) else (lora_id or []):
        if is_catalog_lora_id(one):
            frontend.forget_if_idle(registry, one)
