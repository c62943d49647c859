"""Catalog adapters in SGLang's tokenizer manager and LoRA registry (docs/architecture.md, steps 2 and 9).

Which revision a name selects, and when a stock load or unload is refused, is
``frontend/catalog_names.py``; here the hooks reach into SGLang's registry, which
holds a revision name only while a request uses it.
"""

from __future__ import annotations

import asyncio
import logging

from sglang.srt.lora.lora_registry import LoRARef

from sglang_mint.frontend.catalog_names import CatalogNames
from sglang_mint.frontend.request_values import (ModelLimits, check_lora_path_shape, check_parallel_samples,
                                                  check_tokenized_request)
from sglang_mint.frontend.session_bounds import check_session_params
from sglang_mint.frontend.staged_revisions import StagedRevisions, staging_root
from sglang_mint.lora_id import CatalogLoraId, RevisionName, is_catalog_lora_id, lora_name_of
from sglang_mint.residency.metrics import FrontendMetrics
from sglang_mint.sglang.client_rids import (ADAPTER_WARM_UP_RID_HEAD, OWN_RID_HEAD, adapter_warm_up_rid,
                                           refuse_prefix_rids, refuse_reserved_rids, warn_of_scheduler_timeouts)
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_startup
from sglang_mint.sglang.metric_labels import refuse_unallowed_custom_labels
from sglang_mint.sglang.router_fields import refuse_router_fields
from sglang_mint.sglang.typed_ipc import ready_for_msgpack

logger = logging.getLogger("sglang_mint")


class CatalogFrontend(CatalogNames):
    """The tokenizer manager's view of the catalog: CatalogNames, registered in SGLang's registry."""

    def __init__(self, config, port: int):
        from sglang_mint.sglang.flags import metrics_enabled  # looked up per call: tests stand it in

        super().__init__(config.open_catalog(), FrontendMetrics(metrics_enabled()),
                         StagedRevisions(staging_root(port)))
        self._warming: set[asyncio.Task] = set()

    @staticmethod
    def lora_id_of(name: RevisionName) -> str:
        """The LoRA id ``name`` is registered under: a CatalogLoraId (sglang_mint/lora_id.py), or its
        plain string when SGLang sends msgpack (SGLANG_USE_PICKLE_IPC=0), which takes no other."""
        from sglang.srt.environ import envs

        if envs.SGLANG_USE_PICKLE_IPC.get():
            return CatalogLoraId(name.revision)
        return str(CatalogLoraId(name.revision))

    async def arrive(self, tm, obj) -> list[str]:
        """Resolve the request's ``lora_path`` through the catalog (rewritten in place: a bare id
        becomes its current revision) and register the revision names it names; returns them,
        for ``settle`` once SGLang has acquired them. Raises HTTPException 400/404."""
        obj.lora_path, names = self.resolve_lora_path(obj.lora_path, tm.lora_ref_cache, batch=prompts(obj))
        try:
            for name in dict.fromkeys(names):
                if name not in tm.lora_registry._registry:
                    ref = LoRARef(lora_id=self.lora_id_of(name), lora_name=str(name),
                                  lora_path=f"mint-catalog:{name}", pinned=False)
                    try:
                        await tm.lora_registry.register(ref)
                    except ValueError:
                        pass  # another request registered it first
        except BaseException:  # the client went away meanwhile
            self.refused(tm.lora_registry, names)
            raise
        return names

    def refused(self, registry, names) -> None:
        """The request that ``arrive`` registered ``names`` for ended before SGLang acquired them (e.g.
        more adapters than --max-loaded-loras, or the client went away): they are no longer arriving,
        and a name no other request holds leaves the registry, which would otherwise keep it for good
        (nothing releases a name never acquired) and list it in /v1/models."""
        self.settle(names)
        for name in dict.fromkeys(names):
            ref = registry._registry.get(str(name))
            if ref is not None:
                self.forget_if_idle(registry, ref.lora_id)

    def forget_if_idle(self, registry, lora_id: str) -> None:
        """Drop a revision name from SGLang's registry once no request uses it. No await between
        the checks and the deletes: no request can acquire it halfway (``may_forget``)."""
        counter = registry._counters.get(lora_id)
        if counter is None or not self.may_forget(lora_id, counter.value()):
            return
        name = lora_name_of(lora_id)
        ref = registry._registry.get(name)
        if ref is not None and ref.lora_id == lora_id:
            del registry._registry[name]
        del registry._counters[lora_id]

    def warm(self, tm, lora_name: str) -> None:
        """Load an adapter ahead of traffic: a one-token request for it, not awaited, which takes
        the path a real request takes, so nothing else has to know about prefetching."""
        task = asyncio.get_running_loop().create_task(self._warm(tm, lora_name))
        self._warming.add(task)
        task.add_done_callback(self._warming.discard)

    async def _warm(self, tm, lora_name: str) -> None:
        from sglang.srt.managers.io_struct import GenerateReqInput

        obj = GenerateReqInput(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0},
                               lora_path=lora_name, rid=adapter_warm_up_rid())  # a rid the ledger does not bill
        setattr(obj, OWN_RID_HEAD, ADAPTER_WARM_UP_RID_HEAD)  # no client's request has it: the rid is let through
        try:
            async for _ in tm.generate_request(obj, None):
                pass
        except Exception as exc:  # the adapter's own requests will report it
            logger.warning("prefetch of %s failed: %s", lora_name, exc)


def prompts(obj) -> int:
    """The prompts of a request SGLang has normalized (its ``batch_size``, each sampled
    ``parallel_sample_num`` times, as its lora_path list is repeated): 2 prompts with n=3 -> 6."""
    return obj.batch_size * getattr(obj, "parallel_sample_num", 1)


def catalog_frontend(tokenizer_manager) -> CatalogFrontend | None:
    return getattr(tokenizer_manager, "_mint_frontend", None)


def _after_init_lora(result, tm, *args, **kwargs):
    config = mint_config(tm.server_args)
    if config is None:
        return result
    verify_startup("frontend", tokenizer_manager=tm, lora_registry=getattr(tm, "lora_registry", None),
                   **_request_internals(tm))
    warn_of_scheduler_timeouts()
    if config.catalog is not None:
        frontend = tm._mint_frontend = tm.lora_registry._mint_frontend = CatalogFrontend(config, tm.server_args.port)
        frontend.warn_shadowed({name: ref.lora_path for name, ref in tm.lora_ref_cache.items()})  # --lora-paths
    return result


def _request_internals(tm) -> dict:
    """The per-request objects whose internals the hooks read, made once as the server starts so that
    ``verify_startup`` checks them: a batch request split into its prompts, and its abort task (built,
    never run)."""
    from sglang.srt.managers.io_struct import GenerateReqInput

    batch = GenerateReqInput(text=["a", "b"])
    batch.normalize_batch_and_arguments()
    batch[0]  # noqa: B018 - makes the prompts' objects, as SGLang does for a batch
    tasks = tm.create_abort_task(batch)
    first_task = next(iter(getattr(tasks, "tasks", [])), None)
    return {"generate_req_input": batch, "abort_tasks": tasks, "abort_task": first_task}


async def _around_load_lora_adapter(original, tm, obj, *args, **kwargs):
    """TokenizerManager.load_lora_adapter and load_lora_adapter_from_tensors: refuse a catalog name."""
    frontend = catalog_frontend(tm)
    if frontend is not None:
        known = tm.lora_ref_cache.get(obj.lora_name)
        refused = frontend.load_refusal(
            obj.lora_name, known is not None and known.lora_path == getattr(obj, "lora_path", None))
        if refused is not None:
            raise refused
    return await original(tm, obj, *args, **kwargs)


async def _around_unload_lora_adapter(original, tm, obj, *args, **kwargs):
    frontend = catalog_frontend(tm)
    refused = None if frontend is None else frontend.unload_refusal(obj.lora_name, obj.lora_name in tm.lora_ref_cache)
    if refused is not None:
        raise refused
    return await original(tm, obj, *args, **kwargs)


async def _around_validate_and_resolve_lora(original, tm, obj):
    """TokenizerManager._validate_and_resolve_lora, which every request passes before it is sent on: what
    its body writes must not reach other tenants.

    - Its LoRA id is the one its ``lora_path`` resolves to, never one its body writes. SGLang's
      ``/generate`` takes ``lora_id`` from the client and, with no ``lora_path``, sends it on as is:
      ``{"text": "hi", "lora_id": "mint:acme/bot@3"}`` was served and billed as acme/bot revision 3 past
      the catalog, and ``"mint:x"`` stopped the scheduler (no revision to parse).
    - Its rid is no proper prefix of the rids SGLang makes (``client_rids.refuse_prefix_rids``), nor one
      that starts with a reserved head, the server's own unbilled warm-ups' or SGLang's health checks'
      (``client_rids.refuse_reserved_rids``).
    - It writes none of the fields a router writes (a priority, a DP rank, where SGLang acts on them)
      without the admin key (``router_fields.refuse_router_fields``).
    - Its ``custom_labels`` name only labels the server allows: another stopped the server
      (``metric_labels.refuse_unallowed_custom_labels``).
    - Its ``session_params`` are of the types the scheduler reads: a list for a rid stopped the server
      (``session_bounds.check_session_params``).
    - Its ``lora_path`` is one name per prompt: a list on one prompt stopped the server too
      (``request_values.check_lora_path_shape``)."""
    if mint_config(tm.server_args) is not None:
        obj.lora_id = None  # first: SGLang's cleanup of a refused request releases the lora_id it holds
        for sub_obj in obj.__dict__.get("_sub_obj_cache", {}).values():  # a batch's prompts, made already
            sub_obj.lora_id = None
        refuse_prefix_rids(obj.rid)
        refuse_reserved_rids(obj)
        refuse_router_fields(obj)
        refuse_unallowed_custom_labels(tm, obj)
        check_session_params(getattr(obj, "session_params", None))
        check_lora_path_shape(getattr(obj, "lora_path", None), obj.is_single)
    return await original(tm, obj)


def _before_generate_request(tm, obj, request=None, *args, **kwargs):
    """TokenizerManager.generate_request BEFORE, before SGLang makes a request per choice: ``n`` bounded."""
    if mint_config(tm.server_args) is not None:
        check_parallel_samples(getattr(obj, "sampling_params", None))


def _after_create_tokenized_object(tokenized, tm, *args, **kwargs):
    """TokenizerManager._create_tokenized_object AFTER: one prompt's request as the scheduler will get it,
    refused where the scheduler would raise on it, which stops the server (``request_values.py``), or where
    its msgpack decode would (``typed_ipc.py``)."""
    config = mint_config(tm.server_args)
    if config is not None:
        check_tokenized_request(tokenized, ModelLimits(tm.model_config.vocab_size, tm.model_config.hidden_size,
                                                       config.max_top_logprobs))
        ready_for_msgpack(tokenized)
    return tokenized


async def _around_tm_resolve_lora_path(original, tm, obj):
    frontend = catalog_frontend(tm)
    if frontend is None or not obj.lora_path:
        return await original(tm, obj)
    names = await frontend.arrive(tm, obj)
    try:
        resolved = await original(tm, obj)
    except BaseException:
        frontend.refused(tm.lora_registry, names)
        raise
    frontend.settle(names)
    return resolved


def _after_registry_get_all_adapters(adapters, registry, *args, **kwargs):
    """LoRARegistry.get_all_adapters, which /v1/models (and SGLang's gRPC model list) lists: without the
    catalog revisions in flight. One is registered while a tenant's request uses it, so listing it would
    tell every tenant the ids the others call ({"tiny", "stock/x", "acme/bot@1"} -> {"tiny", "stock/x"});
    the operator reads the catalog itself (``mint catalog``, ``GET /mint/adapters/{id}``)."""
    if getattr(registry, "_mint_frontend", None) is None:
        return adapters
    return {name: ref for name, ref in adapters.items() if not is_catalog_lora_id(ref.lora_id)}


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
