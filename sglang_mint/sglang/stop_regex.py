"""A request's ``stop_regex`` matched in bounded time in SGLang's scheduler (the matching:
``sglang_mint/stop_regex.py``).

With ``--enable-mint``, ``schedule_batch.re``, the module SGLang's ``Req`` matches stop patterns with (its
only use of ``re`` there), is a ``BoundedSearch``. A search past its budget raises ``StopRegexTooSlow``, an
``re.error``: where SGLang matches the output after a decode step it catches ``re.error`` and ends that
request (400, naming the pattern). Where it then finds how much of the output the stop took
(``Req._locate_str_stop_finished_len``, only once a pattern matched) it does not catch it: there a search
past the budget cuts the output where the whole window matched, or finds no stop within a step. All the
searches of one request after one step (``Req._check_str_based_finish``) share one budget, and the requests
with patterns of a step share it too (``Scheduler.process_batch_result``: a step's output is checked).
"""

from __future__ import annotations

from sglang_mint.sglang.flags import mint_config
from sglang_mint.stop_regex import BoundedSearch, StopRegexTooSlow


_search: BoundedSearch | None = None  # this scheduler process's, once mint is on


def _after_scheduler_init(result, scheduler, *args, **kwargs):
    """Scheduler.__init__ AFTER: stop patterns matched by a BoundedSearch in this scheduler's process."""
    global _search
    if mint_config(scheduler.server_args) is not None:
        from sglang.srt.managers import schedule_batch

        _search = schedule_batch.re = BoundedSearch()
    return result


def _around_check_str_based_finish(original, req, *args, **kwargs):
    """Req._check_str_based_finish AROUND: the request's stop pattern searches after this step share one budget."""
    if _search is None or not req.sampling_params.stop_regex_strs:
        return original(req, *args, **kwargs)
    with _search.one_request_step():
        return original(req, *args, **kwargs)


def _around_process_batch_result(original, scheduler, batch, *args, **kwargs):
    """Scheduler.process_batch_result AROUND: the step's output is checked; its requests with stop patterns
    share the budget."""
    if _search is not None:
        _search.step_began(sum(1 for req in batch.reqs if req.sampling_params.stop_regex_strs))
    return original(scheduler, batch, *args, **kwargs)


def _around_locate_stop_finished_len(original, req, *args, **kwargs):
    """Req._locate_str_stop_finished_len AROUND: a search past the budget is no match of a shorter window. Where
    the whole window matched (once in a request's life: it then ends) the searches draw on the step's budget
    for that, not on the rest of a crowded step's share."""
    full_window_matched = kwargs.get("full_window_matched", True)
    try:
        if _search is not None and full_window_matched:
            with _search.locating_a_stop():
                return original(req, *args, **kwargs)
        return original(req, *args, **kwargs)
    except StopRegexTooSlow:
        return len(req.output_ids) if full_window_matched else None
