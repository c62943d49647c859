"""bound_grammar_caches on SGLang's own xgrammar backend (sglang/grammar_cache.py), no server.
A real server: tests/sglang/test_grammar_cache.py."""

from __future__ import annotations

from sglang_mint.grammar_cache import GrammarCache
from sglang_mint.sglang.grammar_cache import UNMEASURED_GRAMMAR_BYTES, bound_grammar_caches, grammar_value_bytes


def test_the_backend_s_cache_is_bounded_and_xgrammar_keeps_none_of_its_own(tiny_model):
    from sglang.srt.constrained.base_grammar_backend import InvalidGrammarObject
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammarBackend
    from transformers import AutoTokenizer

    backend = XGrammarGrammarBackend(AutoTokenizer.from_pretrained(tiny_model), vocab_size=512)
    assert isinstance(backend.cache, dict)
    cache = bound_grammar_caches(backend, 1 << 20)
    assert backend.cache is cache and isinstance(cache, GrammarCache) and cache.budget_bytes == 1 << 20

    key = ("regex", "(ab|cd){2}")
    future, hit = backend.get_cached_or_future_value(key, require_reasoning=False)
    assert not hit
    grammar = future.result()
    backend.set_cache(key, grammar.copy())
    assert grammar_value_bytes(grammar) == grammar.ctx.memory_size_bytes > 0
    assert 0 < cache.bytes and backend.get_cached_or_future_value(key, require_reasoning=False)[1]
    assert backend.grammar_compiler.get_cache_size_bytes() == 0  # xgrammar cached nothing of its own
    assert grammar_value_bytes(InvalidGrammarObject("x" * 1000)) > 1000


def test_a_grammar_is_weighed_inside_the_reasoning_wrapper_and_an_unmeasured_one_by_the_floor(tiny_model):
    from sglang.srt.constrained.reasoner_grammar_backend import ReasonerGrammarObject
    from sglang.srt.constrained.xgrammar_backend import XGrammarGrammarBackend
    from transformers import AutoTokenizer

    backend = XGrammarGrammarBackend(AutoTokenizer.from_pretrained(tiny_model), vocab_size=512)
    grammar = backend.get_cached_or_future_value(("regex", "(ab|cd){2}"), require_reasoning=False)[0].result()
    wrapped = ReasonerGrammarObject.__new__(ReasonerGrammarObject)  # as --reasoning-parser caches it
    wrapped.grammar = grammar
    assert grammar_value_bytes(wrapped) == grammar.ctx.memory_size_bytes > 0
    assert grammar_value_bytes(object()) == UNMEASURED_GRAMMAR_BYTES  # outlines', llguidance's grammars
