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
output (a pattern with ``*``, ``+`` or ``$`` reads all of it). Only the searches are timed, not compiling a
pattern (bounded at arrival, ``check_stop_patterns``) nor SGLang's decoding of the output they read; and a
search holds the GIL (``concurrent=False``), or a thread of the scheduler's own could take it for some
milliseconds and the request be charged the wait. The step's total is
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

try:
    from re import _parser as _re_parser  # how re reads a pattern (Python 3.11+)
except ImportError:  # pragma: no cover - older Pythons
    import sre_parse as _re_parser

STOP_REGEX_BUDGET_S = 0.02  # the searches after a step: of one request, and of all together; a plain one takes µs
MIN_SHARE_S = 0.001  # ... of each request, however many share it
# A pattern's parts with its counted repeats written out (``unrolled_size``): regex compiles 2,000 in some
# milliseconds and 1 MB, and (?:(?:(?:(?:(?:(?:(?:ab){7}){7}){7}){7}){7}){7}){7}, 4 million, in 1.4 s and 500 MB,
# out of any budget
MAX_UNROLLED = 2_000
_QUANTIFIER = re.compile(r"\{\d*,?\d*\}")  # re's {m}, {m,}, {,n}, {m,n} ({} alone is a literal)


@functools.lru_cache(maxsize=512)  # within MAX_UNROLLED each, some hundreds of MB at most
def _compiled(pattern: str, flags: int):
    """``pattern`` compiled as ``re`` reads it, and kept (``regex`` keeps 500 of its own). Its compiling is not
    charged to the request: a process's first patterns compiled cold took over 20 ms on a loaded machine, and
    32 long ones most of 20 ms. ``check_stop_patterns`` bounds it at arrival (``MAX_UNROLLED``); past 512
    patterns in use, each step compiles some again, uncharged."""
    return regex.compile(as_re_reads_it(pattern, flags), flags)


_INLINE_FLAGS = re.compile(r"\(\?([aiLmsux]*)(?:-([imsx]+))?([:)])")  # (?x), (?x:...), (?-x:...), (?:...)


@functools.lru_cache(maxsize=4096)
def as_re_reads_it(pattern: str, flags: int = 0) -> str:
    """``pattern`` with the braces that are no quantifier to ``re`` and the ``[`` inside a character class
    escaped, so that ``regex`` reads it as ``re`` does. Comments (``(?#...)``, and ``#`` to the line's end
    where verbose) and named characters (``\\N{DIGIT ONE}``) are kept as they are; in verbose mode a ``#``
    comment's escaped line ends are taken out, and a numeric escape followed, past space, by more digits is
    ended with ``(?:)``, where ``regex`` would read on."""
    out, i, in_class = [], 0, False
    verbose = [bool(flags & re.VERBOSE)]  # within each open group, the innermost last
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            end = _escape_end(pattern, i)
            out.append(pattern[i:end])
            if verbose[-1] and not in_class and pattern[i + 1:i + 2].isdigit() and _digit_past_space(pattern, end):
                out.append("(?:)")  # re's \1 ends at its last adjacent digit; regex reads past space to more
            i = end
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
        elif pattern.startswith("(?#", i) or (c == "#" and verbose[-1]):
            end = _comment_end(pattern, i)
            comment = pattern[i:end]  # a # one may span lines ended by a backslash, which regex ends at
            out.append(comment if c == "(" else comment[:-1].replace("\n", "") + comment[-1:])
            i = end
            continue
        elif c == "(":
            flagged = _INLINE_FLAGS.match(pattern, i)
            if flagged and flagged[3] == ")":  # the whole pattern's flags, at its start
                verbose[0] = verbose[0] or "x" in flagged[1]
            elif flagged:
                verbose.append(("x" in flagged[1] or verbose[-1]) and "x" not in (flagged[2] or ""))
            else:
                verbose.append(verbose[-1])
            out.append(flagged[0] if flagged else c)
            i = flagged.end() if flagged else i + 1
            continue
        elif c == ")":
            if len(verbose) > 1:
                verbose.pop()
            out.append(c)
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


def _escape_end(pattern: str, i: int) -> int:
    """Where the escape at ``i`` ends: a named character's after its ``}``, a group reference's or an octal's
    after its digits, any other's after its one character."""
    if pattern.startswith("N{", i + 1):
        return max(pattern.find("}", i) + 1, i + 2)
    end = i + 2
    if pattern[i + 1:i + 2].isdigit():
        while pattern[end:end + 1].isdigit():
            end += 1
    return end


def _digit_past_space(pattern: str, i: int) -> bool:
    """Whether a digit follows ``i`` past whitespace and ``#`` comments (and not right at it), as verbose
    mode skips them."""
    k = i
    while k < len(pattern) and (pattern[k] in " \t\n\r\f\v" or pattern[k] == "#"):
        k = _comment_end(pattern, k) if pattern[k] == "#" else k + 1
    return k > i and pattern[k:k + 1].isdigit()


def _comment_end(pattern: str, i: int) -> int:
    """Where the comment at ``i`` ends: a ``(?#`` one after its first ``)`` not escaped, a ``#`` one after the
    first line end not escaped (re reads a backslash and a line end as one escaped character)."""
    if pattern[i] == "#":
        while i < len(pattern) and pattern[i] != "\n":
            i += 2 if pattern[i] == "\\" else 1
        return min(i + 1, len(pattern))
    i += 3
    while i < len(pattern) and pattern[i] != ")":
        i += 2 if pattern[i] == "\\" else 1
    return min(i + 1, len(pattern))


def unrolled_size(pattern: str) -> int:
    """About how many parts ``regex`` compiles ``pattern`` (as ``re`` reads it) to, measured: a repeat with a
    least count n of 1 or more (``{n}``, ``{n,m}``, ``+``) holds its body n + 1 times, so nested ones multiply
    (``(?:(?:ab){7}){7}`` is 128, and 22 nested ``+`` took 7 s and 3 GB); one that may match nothing (``*``,
    ``?``, ``{0,m}``) holds it once. 0 for a pattern ``re`` refuses; past ``MAX_UNROLLED`` for one it cannot
    even count (``a{99999999999999999999}``)."""
    try:
        return _unrolled(_re_parser.parse(pattern))
    except re.error:
        return 0
    except (OverflowError, RecursionError):
        return MAX_UNROLLED + 1


_REPEATS = {name for name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT") if hasattr(_re_parser, name)}


def _unrolled(items) -> int:
    total = 0
    for op, av in items:
        name = str(op)
        if name in _REPEATS:
            low, high, body = av
            total += (1 if low == 0 or low == high == 1 else low + 1) * _unrolled(body)
        elif name == "SUBPATTERN":
            total += _unrolled(av[-1])
        elif name == "BRANCH":
            total += sum(_unrolled(branch) for branch in av[1])
        elif name in ("ASSERT", "ASSERT_NOT"):
            total += _unrolled(av[1])
        elif name == "ATOMIC_GROUP":
            total += _unrolled(av)
        elif name == "GROUPREF_EXISTS":
            total += _unrolled(av[1]) + (_unrolled(av[2]) if av[2] else 0)
        else:
            total += 1
    return total


def check_stop_patterns(patterns) -> None:
    """A ValueError naming the first of a request's ``stop_regex`` patterns that ``regex`` would take past
    ``MAX_UNROLLED`` parts to compile (time no budget bounds, and memory it keeps)."""
    for pattern in [patterns] if isinstance(patterns, str) else patterns or ():
        if isinstance(pattern, str) and unrolled_size(as_re_reads_it(pattern)) > MAX_UNROLLED:
            raise ValueError(f"stop_regex: {pattern[:60]!r} has over {MAX_UNROLLED} parts with its counted repeats "
                             "written out (nested {n} repeats multiply); write it with fewer or smaller counts")


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
        self.locate_left_s = budget_s  # this step's, for finding where matched stops begin

    def step_began(self, requests_with_patterns: int) -> None:
        """The scheduler checks a step's output: each request with patterns has ``budget_s`` over how many there
        are, at least ``MIN_SHARE_S``."""
        self.sharing = max(1, requests_with_patterns)
        self.share_s = max(MIN_SHARE_S, self.budget_s / self.sharing)
        self.locate_left_s = self.budget_s

    @contextlib.contextmanager
    def one_request_step(self):
        """The searches made within share one request's share of the step (its patterns after one step)."""
        if self._left_s is not None:  # within one already: its share
            yield
            return
        self._left_s = self.share_s
        try:
            yield
        finally:
            self._left_s = None

    @contextlib.contextmanager
    def locating_a_stop(self):
        """The searches made within find where a matched stop begins (once in a request's life: it then ends),
        out of the step's ``budget_s`` for that, not the request's share."""
        outer, self._left_s = self._left_s, self.locate_left_s
        try:
            yield
        finally:
            self.locate_left_s = max(0.0, self._left_s)
            self._left_s = outer

    def search(self, pattern, string, flags=0):
        try:
            compiled = _compiled(pattern, flags)  # not charged: within MAX_UNROLLED, some milliseconds at most
        except regex.error as exc:  # re accepted it at the request's arrival
            raise re.error(f"the pattern does not compile here: {exc}") from None
        started = time.perf_counter()
        timeout = self.share_s if self._left_s is None else self._left_s
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
