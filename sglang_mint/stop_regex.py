"""A request's ``stop_regex`` matched in bounded time.

SGLang's scheduler matches each ``stop_regex`` against a request's output after every decode step, with
Python's ``re``, a backtracking engine, on the scheduler's own thread. A pattern such as ``(.+)+\\x00``
backtracks exponentially in the length of the text it fails to match: 1.6 s at 24 characters, and by 40
it never ends. One such request froze the scheduler, and with it every tenant's requests (its watchdog
too: the search holds the GIL).

``BoundedSearch`` stands in for ``re`` where SGLang matches stop patterns. It matches with the ``regex``
package, which needs no backtracking for most of those patterns (``(.+)+\\x00`` on 40 characters: no
time at all), and stops a search that takes longer than ``budget_s`` (``(a|aa)+b`` on a run of a's) with
``StopRegexTooSlow``, an ``re.error``: SGLang ends that request, 400, and the scheduler goes on. Within
``one_request_step()``, where the scheduler matches one request's patterns after a step, all its searches
share one ``budget_s``: a request may send 32 patterns, each within the budget alone (32 of 4 ms held the
scheduler some 85 ms a step). And the requests with patterns in one step (``step_began(n)``) share
``budget_s``, each at least ``MIN_SHARE_S``: 16 requests of 16 ms each held every step some 250 ms (a
48-token answer beside them took 3.5 s, not 0.19). One request alone has all of it; with 100, each has
1 ms, where a plain pattern takes microseconds on the output's tail, and some 0.3 ms on 4,096 tokens of
output (a pattern with ``*``, ``+`` or ``$`` reads all of it). Only the searches are timed, not SGLang's
decoding of the output they read; and a search holds the GIL (``concurrent=False``), or a thread of the
scheduler's own could take it for some milliseconds and the request be charged the wait. The step's total is
bounded by ``budget_s`` up to 20 requests with patterns, and by ``MIN_SHARE_S`` each past them.

Where the two engines read a pattern differently, it is first written as ``re`` reads it
(``as_re_reads_it``): ``regex`` takes ``{e}``, ``{d}``, ``{s}``, ``{i}`` (and braces that begin with
those letters, as in ``\\end{document}``) as fuzzy-matching constraints and ``[[:digit:]]`` as a POSIX
class, where ``re`` takes both literally; such braces and brackets are escaped. Not made the same:
``\\s``, which ``regex`` does not let match ``\x1c`` to ``\x1f``.
"""

from __future__ import annotations

import contextlib
import functools
import re
import time

import regex

STOP_REGEX_BUDGET_S = 0.02  # the searches after a step: of one request, and of all together; a plain one takes µs
MIN_SHARE_S = 0.001  # ... of each request, however many share it
_QUANTIFIER = re.compile(r"\{\d*,?\d*\}")  # re's {m}, {m,}, {,n}, {m,n} ({} alone is a literal)


@functools.lru_cache(maxsize=4096)
def _compiled(pattern: str, flags: int):
    """``pattern`` compiled as ``re`` reads it: outside a search's budget (``regex`` keeps 500 compiled patterns
    of its own, and 32 long ones took most of 20 ms to compile)."""
    return regex.compile(as_re_reads_it(pattern), flags)


@functools.lru_cache(maxsize=4096)
def as_re_reads_it(pattern: str) -> str:
    """``pattern`` with the braces that are no quantifier to ``re`` and the ``[`` inside a character class
    escaped, so that ``regex`` reads it as ``re`` does."""
    out, i, in_class = [], 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            out.append(pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            in_class = c != "]"
            out.append("\\[" if c == "[" else c)
        elif c == "[":
            j = i + 1 + (pattern[i + 1:i + 2] == "^")
            out.append(pattern[i:j] + ("\\]" if pattern[j:j + 1] == "]" else ""))  # a "]" first is literal
            i = j + (pattern[j:j + 1] == "]")
            in_class = True
            continue
        elif c == "{":
            quantifier = _QUANTIFIER.match(pattern, i)
            if quantifier and quantifier[0] != "{}":
                out.append(quantifier[0])
                i = quantifier.end()
                continue
            out.append("\\{")
        elif c == "}":
            out.append("\\}")
        else:
            out.append(c)
        i += 1
    return "".join(out)


class StopRegexTooSlow(re.error):
    """A stop pattern's search took longer than its budget."""


class BoundedSearch:
    """``re.search`` and ``re.error``, as SGLang's scheduler uses them for stop patterns, within ``budget_s``
    a search, or all the searches of ``one_request_step()`` within the request's share of the step's
    ``budget_s``; anything else of ``re`` as it is."""

    error = re.error

    def __init__(self, budget_s: float = STOP_REGEX_BUDGET_S):
        self.budget_s = budget_s
        self.share_s = budget_s  # of each request, this step
        self.sharing = 1  # the requests with patterns this step
        self._left_s: float | None = None  # of the request's allowance, within one_request_step

    def step_began(self, requests_with_patterns: int) -> None:
        """The scheduler checks a step's output: each request with patterns has ``budget_s`` over how many there
        are, at least ``MIN_SHARE_S``."""
        self.sharing = max(1, requests_with_patterns)
        self.share_s = max(MIN_SHARE_S, self.budget_s / self.sharing)

    @contextlib.contextmanager
    def one_request_step(self, allowance_s: float | None = None):
        """The searches made within share one request's share of the step (its patterns after one step), or
        ``allowance_s`` of their own."""
        outer = self._left_s
        if outer is None or allowance_s is not None:
            self._left_s = self.share_s if allowance_s is None else allowance_s
        try:
            yield
        finally:
            self._left_s = outer

    def search(self, pattern, string, flags=0):
        try:
            compiled = _compiled(pattern, flags)
        except regex.error as exc:  # re accepted it at the request's arrival
            raise re.error(f"the pattern does not compile here: {exc}") from None
        timeout = self.share_s if self._left_s is None else self._left_s
        started = time.perf_counter()
        try:
            if timeout <= 0:
                raise TimeoutError
            return compiled.search(string, timeout=timeout, concurrent=False)
        except TimeoutError:
            share = (f"{self.share_s * 1000:.3g} ms (its share of the {self.budget_s * 1000:g} ms that this step's "
                     f"{self.sharing} requests with stop patterns have together, at least {MIN_SHARE_S * 1000:g} ms)"
                     if self.share_s < self.budget_s else f"{self.budget_s * 1000:g} ms")
            raise StopRegexTooSlow(f"matching the request's stop patterns together took over {share} on the "
                                   "output so far; a pattern that backtracks (a repeat inside a repeat, such as "
                                   "(a|aa)+) takes that long: write each so that each character can match one way"
                                   ) from None
        finally:
            if self._left_s is not None:
                self._left_s -= time.perf_counter() - started

    def __getattr__(self, name):
        return getattr(re, name)
