"""Stop patterns matched in bounded time (sglang_mint/stop_regex.py). A real server: tests/sglang/test_stop_regex_served.py."""

from __future__ import annotations

import functools
import re
from types import SimpleNamespace

import pytest

from sglang_mint import stop_regex
from sglang_mint.stop_regex import BoundedSearch, StopRegexTooSlow, check_stop_patterns, unrolled_size


@pytest.mark.parametrize("pattern, text", [
    (r"\d+ apples", "we have 12 apples"), (r"^The", "The end"), (r"end$", "the end"), (r"(?i)STOP", "please stop"),
    (r"a{3}", "aab"), (r"\n\n", "one\n\ntwo"), (r"[.!?]\s*$", "done. "),
    # read differently by the regex package as it is: braces that are no quantifier, "[" inside a class
    (r"\\end{document}", r"proof done \end{document}"), (r"x{e}", "ax{e}b"), (r"a{}", "a{}"), (r"}", "a}"),
    (r"[[:digit:]]+$", "answer 42"), (r"[[:digit:]]+$", "x:]"), (r"[]a]+", "]a]"), (r"[^]a]+", "]bcd"),
    (r"a{,2}b", "aab"), (r"a{2,}", "caaa"),
    # named characters, and comments, where "[" opens no class and braces are not the regex package's
    (r"\N{LATIN SMALL LETTER A}b", "xab"), (r"[\N{DIGIT ONE}]{2}", "x11"), (r"(?#[)a{e}", "a{e}"),
    (r"(?#\)[)a{e}", "a{e}"), ("(?x) # [\n a{e}", "a{e}"), ("(?x:a # [\n){e}b", "a{e}b"), ("(?x:a)#{e}", "a#{e}"),
    ("(?x)(?-x:#){e}", "#{e}"), ("(?x) a {2}", "aa"), ("(?x)a\\ #{e}", "a #"),
    # verbose: a comment's line end escaped goes on to the next line; a numeric escape ends at its own digits
    ("(?x)a#\\\nb", "a"), ("(?x)a#\\\nb", "ab"), ("(?x)a#\\\n|b", "b"), ("(?x)a#\\\n[{e}", "a"),
    ("(?x)\\0 1", "\x001"), ("(?x)\\0 1", "\x01"), ("(?x)(a)\\1 0", "aa0"), ("(?x)(a)\\1#c\n0", "aa0"),
    ("(?x)(a)\\1{2}", "aaa"),
])
@pytest.mark.filterwarnings("ignore:Possible nested set")
def test_it_finds_what_re_finds(pattern, text):
    found, expected = BoundedSearch().search(pattern, text), re.search(pattern, text)
    assert (found and found.span()) == (expected and expected.span())


def test_a_pattern_re_backtracks_on_for_good_is_answered():
    # re: 1.6 s at 24 characters, doubling with each more; here there is no backtracking to do
    assert BoundedSearch().search("(.+)+\x00", "a" * 40) is None
    assert BoundedSearch().search("(.+)+\x00", "a" * 40 + "\x00").span() == (0, 41)


def test_a_search_past_the_budget_is_an_re_error_naming_why():
    with pytest.raises(re.error, match="took over 20 ms on the output so far") as caught:
        BoundedSearch().search("(a|aa)+b", "a" * 60)
    assert isinstance(caught.value, StopRegexTooSlow)


def test_the_rest_of_re_is_re():
    assert BoundedSearch().error is re.error and BoundedSearch().escape("a.b") == re.escape("a.b")


class TimedEngine:
    """Stands in for the regex package in tests of the budget's accounting: each pattern takes the seconds it
    was made with, on a clock of its own, so that a loaded machine (the suite's workers run at nice 19 beside
    SGLang servers, and a few ms of searching took over a second there) changes nothing."""

    def __init__(self, monkeypatch):
        self.now, self.compile_s, self._costs = 0.0, 0.0, {}
        monkeypatch.setattr(stop_regex, "time", SimpleNamespace(perf_counter=lambda: self.now))
        monkeypatch.setattr(stop_regex, "_compiled", self._compiled)

    def pattern(self, cost_s: float) -> str:
        name = f"p{len(self._costs)}"
        self._costs[name] = cost_s
        return name

    def wait(self, seconds: float) -> None:
        self.now += seconds

    def _compiled(self, pattern, flags):
        self.now += self.compile_s
        return SimpleNamespace(search=functools.partial(self._search, self._costs[pattern]))

    def _search(self, cost_s, string, timeout, concurrent):
        assert concurrent is False  # holding the GIL, or a thread's wait would be charged
        if cost_s > timeout:
            self.now += timeout
            raise TimeoutError
        self.now += cost_s
        return string


@pytest.fixture
def engine(monkeypatch) -> TimedEngine:
    return TimedEngine(monkeypatch)


def searches_until_refused(search: BoundedSearch, pattern: str, most: int = 10_000) -> int:
    """How many searches of ``pattern`` pass within one request's step before one is refused."""
    with search.one_request_step():
        for done in range(most):
            try:
                search.search(pattern, "a")
            except StopRegexTooSlow:
                return done
    return most


def test_the_searches_of_one_request_step_share_one_budget(engine):
    search, pattern = BoundedSearch(budget_s=0.05), engine.pattern(0.004)
    for _ in range(30):
        assert search.search(pattern, "a") == "a"  # each alone well within its budget
    assert searches_until_refused(search, pattern) == 12  # 48 ms; the 13th would pass 50
    assert search.search(pattern, "a") == "a"  # the next step has its own


def test_one_request_step_is_bounded_by_the_real_engine_too():
    search, pattern, window = BoundedSearch(budget_s=0.05), "(a|aa){1,11}b", "a" * 24  # a few ms a search
    with pytest.raises(StopRegexTooSlow, match="stop patterns together took over 50 ms"):
        with search.one_request_step():
            for _ in range(200):  # some 800 ms in all, were the budget not shared
                search.search(pattern, window)


def test_the_requests_of_a_step_share_one_budget_at_least_a_millisecond_each(engine):
    search, pattern = BoundedSearch(budget_s=0.05), engine.pattern(0.002)
    search.step_began(10)
    assert search.share_s == pytest.approx(0.005)
    assert searches_until_refused(search, pattern) == 2  # within 50 ms alone, but not within a tenth of it
    with pytest.raises(StopRegexTooSlow, match=r"took over 5 ms \(its share of the 50 ms that this step's 10 "):
        with search.one_request_step():
            for _ in range(3):
                search.search(pattern, "a")
    with search.one_request_step():
        assert search.search(engine.pattern(0.000_01), "a")  # a plain pattern, within a share of microseconds
    search.step_began(1000)
    assert search.share_s == pytest.approx(0.001)  # not 50 µs: a plain pattern on a long output takes more
    assert searches_until_refused(search, engine.pattern(0.000_3)) == 3
    search.step_began(0)
    assert search.share_s == pytest.approx(0.05)


def test_only_the_searches_are_charged_not_what_the_scheduler_does_between_them(engine):
    search, pattern = BoundedSearch(budget_s=0.01), engine.pattern(0.003)
    with search.one_request_step():
        for _ in range(3):
            engine.wait(0.01)  # SGLang decoding the output the next search reads
            assert search.search(pattern, "a")
        with pytest.raises(StopRegexTooSlow):  # 12 ms of searching
            search.search(pattern, "a")


def test_finding_where_stops_begin_draws_on_one_budget_a_step_not_on_a_crowded_share(engine):
    search, pattern = BoundedSearch(budget_s=1.0), engine.pattern(0.006)
    search.step_began(1000)
    assert search.share_s == pytest.approx(0.001)
    with search.one_request_step():
        with search.locating_a_stop():  # where the whole window matched: 18 ms, past the 1 ms share
            for _ in range(3):
                search.search(pattern, "a")
        assert search.locate_left_s == pytest.approx(0.982)
        with pytest.raises(StopRegexTooSlow):
            search.search(pattern, "a")  # back within the request's own share
    located = 0
    with pytest.raises(StopRegexTooSlow):  # the step's budget for it, spent by many requests
        while True:
            with search.one_request_step(), search.locating_a_stop():
                search.search(pattern, "a")
            located += 1
    assert located == 163 and search.locate_left_s == 0  # 982 ms of 6 ms searches
    search.step_began(1000)
    assert search.locate_left_s == 1.0


def test_a_nested_request_step_shares_the_outer_one(engine):
    search, pattern = BoundedSearch(budget_s=0.02), engine.pattern(0.0015)
    with search.one_request_step():
        for _ in range(13):  # 19.5 ms
            with search.one_request_step():  # gives nothing back as it ends
                search.search(pattern, "a")
        with pytest.raises(StopRegexTooSlow):
            with search.one_request_step():
                search.search(pattern, "a")


def test_compiling_is_not_charged_to_the_request(engine):
    """Compiling cold took over 20 ms on a loaded machine; check_stop_patterns bounds it at arrival instead."""
    engine.compile_s = 0.005  # ten patterns: 50 ms, over the 20 ms budget
    search = BoundedSearch(budget_s=0.02)
    with search.one_request_step():
        for _ in range(10):
            assert search.search(engine.pattern(0.000_1), "abc")


@pytest.mark.parametrize("pattern, size", [
    (r"\d{4}-\d{2}-\d{2}", 13), ("[0-9]{1,1000}", 2), ("a*b+", 3), ("(?:foo|bar){1,100}", 12),
    ("(?:ab){0,65535}", 2), ("(?:(?:ab){7}){7}", 128), ("(?:(?:(?:(?:(?:(?:(?:ab){7}){7}){7}){7}){7}){7}){7}", 2 * 8 ** 7),
    ("(?:" * 22 + "ab" + ")+" * 22, 2 * 2 ** 22), ("a{99999999999999999999}", 2001), ("(", 0),
])
def test_unrolled_size_multiplies_nested_repeats_by_their_least_count(pattern, size):
    assert unrolled_size(pattern) == size


def test_what_a_verbose_comment_hides_from_re_is_hidden_from_regex_too():
    # re reads all after the escaped line end as the comment, so the arrival bound saw nothing to refuse, and
    # regex, reading on, compiled 65,536 parts (at 7 nested repeats 4 million: 1.4 s and 500 MB, uncharged)
    pattern = "(?x)a#\\\n" + "(?:" * 5 + "ab" + "){7}" * 5
    check_stop_patterns([pattern])
    assert BoundedSearch().search(pattern, "a").span() == (0, 1)  # regex reads it as "a" too


def test_a_stop_pattern_that_unrolls_past_the_bound_is_refused_by_name():
    check_stop_patterns(["(a|aa){1,10}b", "[0-9]{1,1000}"])
    check_stop_patterns(None)
    with pytest.raises(ValueError, match=r"stop_regex: '\(\?:\(\?:\(\?:\(\?:ab\)\{7\}.* has over 2000 parts"):
        check_stop_patterns(["a", "(?:(?:(?:(?:ab){7}){7}){7}){7}"])
    with pytest.raises(ValueError):
        check_stop_patterns("(?:ab){1001}")
