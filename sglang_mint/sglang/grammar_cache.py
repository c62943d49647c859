"""The scheduler's compiled grammars within ``--mint-grammar-cache-bytes`` (the cache: ``grammar_cache.py``).

SGLang's grammar backend (and the reasoning backend wrapped around it) keeps its grammars in a dict,
``cache``; ``_after_grammar_manager_init`` swaps in a ``GrammarCache`` with the budget. xgrammar's
compiler keeps a cache of its own under the same texts, which SGLang's makes redundant, and that one
kept every regex that failed to compile past any limit set on it (xgrammar 0.2.7, compiling invalid
regexes in one process; nothing was kept with the cache off), so its compiler is replaced by one
without a cache, as SGLang makes its own framing compiler. ``/server_info`` shows each scheduler's
figures under ``internal_states[i].mint_grammar_cache``.
"""

from __future__ import annotations

import sys

from sglang_mint.grammar_cache import GrammarCache
from sglang_mint.sglang.flags import mint_config
from sglang_mint.sglang.hooks import verify_internals


# What a compiled grammar without a measure of its own is taken to hold (outlines', llguidance's): the
# default budget keeps 2,048 of them
UNMEASURED_GRAMMAR_BYTES = 256 << 10


def grammar_value_bytes(value) -> int:
    """What a cached grammar holds: a failed one, its error message; an xgrammar one, its compiled form by
    xgrammar's own measure, inside the reasoning backend's wrapper too; any other, ``UNMEASURED_GRAMMAR_BYTES``."""
    from sglang.srt.constrained.base_grammar_backend import InvalidGrammarObject
    from sglang.srt.constrained.reasoner_grammar_backend import ReasonerGrammarObject

    while isinstance(value, ReasonerGrammarObject):
        value = value.grammar
    if isinstance(value, InvalidGrammarObject):
        return sys.getsizeof(value.error_message)
    measured = getattr(getattr(value, "ctx", None), "memory_size_bytes", None)
    return measured if isinstance(measured, int) else UNMEASURED_GRAMMAR_BYTES


def bound_grammar_caches(backend, budget_bytes: int) -> GrammarCache:
    """Give ``backend``, and each backend it wraps, a ``GrammarCache`` of ``budget_bytes``, and an xgrammar
    backend a compiler without a cache of its own; returns the outermost cache, the one requests fill."""
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammarBackend

    outermost = None
    while backend is not None:
        xgrammar_backend = backend if isinstance(backend, XGrammarGrammarBackend) else None
        verify_internals("scheduler", grammar_backend=backend, xgrammar_backend=xgrammar_backend)
        backend.cache = GrammarCache(budget_bytes, grammar_value_bytes)
        outermost = outermost or backend.cache
        if xgrammar_backend is not None:
            from xgrammar import GrammarCompiler

            backend.grammar_compiler = GrammarCompiler(tokenizer_info=backend._tokenizer_info, cache_enabled=False)
        backend = getattr(backend, "grammar_backend", None)
    return outermost


def _after_grammar_manager_init(result, manager, *args, **kwargs):
    """GrammarManager.__init__ AFTER: with ``--enable-mint`` and a grammar backend, bound its caches."""
    config = mint_config(manager.server_args)
    if config is not None and manager.grammar_backend is not None:
        bound_grammar_caches(manager.grammar_backend, config.grammar_cache_bytes)
    return result


def _after_get_internal_state(result, scheduler, *args, **kwargs):
    """Scheduler.get_internal_state AFTER: the grammar cache's entries, bytes, budget and evictions."""
    backend = getattr(getattr(scheduler, "grammar_manager", None), "grammar_backend", None)
    cache = getattr(backend, "cache", None)
    if isinstance(cache, GrammarCache):
        result.internal_state["mint_grammar_cache"] = cache.status()
    return result
