"""What the usage ledger files a request's end under (``residency.usage_outcome``), from the finish
reasons SGLang 0.5.23 itself makes: an error is an abort the server ended with a status, a
cancellation one a client's hang-up or ``/abort_request`` made. No server: SGLang's own reason
objects and its grammar queue's abort, run on a stand-in request.
"""

from http import HTTPStatus
from types import SimpleNamespace
from unittest import mock

import sglang.srt.managers.schedule_batch as schedule_batch
from sglang.srt.constrained import grammar_manager
from sglang.srt.managers.io_struct import AbortReq
from sglang.srt.managers.schedule_batch import FINISH_ABORT, FINISH_LENGTH, FINISH_MATCHED_TOKEN
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_mint.sglang.residency import _count_usage, usage_outcome

ERROR, CANCELLED, NEITHER = (True, False), (False, True), (False, False)


def test_finish_reasons_sglang_makes():
    assert usage_outcome(FINISH_LENGTH(8).to_json()) == NEITHER
    assert usage_outcome(FINISH_MATCHED_TOKEN(2).to_json()) == NEITHER
    # a hang-up or /abort_request of a running or queued request (scheduler.abort_request)
    assert usage_outcome(FINISH_ABORT().to_json()) == CANCELLED
    assert usage_outcome(None) == CANCELLED  # an abort SGLang reports with no reason
    # the catalog refusing an adapter (request_holds), a full queue, a timeout
    assert usage_outcome(FINISH_ABORT("adapter acme/bot could not be loaded", 422).to_json()) == ERROR
    assert usage_outcome({"type": "abort", "status_code": HTTPStatus.SERVICE_UNAVAILABLE,
                          "message": "The request queue is full."}) == ERROR
    assert usage_outcome(FINISH_ABORT("timed out", HTTPStatus.SERVICE_UNAVAILABLE).to_json()) == ERROR


def test_a_hang_up_while_the_grammar_compiles_is_a_cancellation():
    """SGLang's grammar queue ends an AbortReq's request with set_finish_with_abort, whose status is
    400 unless given: the ledger must not bill a client's hang-up as the server's error."""
    recorded = []
    ledger = SimpleNamespace(record=lambda *args, **counts: recorded.append(counts))
    req = SimpleNamespace(rid="r1", grammar=None, origin_input_ids=[1, 2, 3], cached_tokens=0,
                          sampling_params=SamplingParams(), output_ids_through_stop=[], to_finish=None,
                          finished_reason=None, release_mm_inputs_on_abort=lambda: None,
                          _mint_usage=(ledger, "acme/bot", 3))
    req.set_finish_with_abort = lambda *a, **k: schedule_batch.Req.set_finish_with_abort(req, *a, **k)
    with mock.patch.object(schedule_batch, "get_parallel", lambda: SimpleNamespace(tp_rank=1)):
        grammar_manager.GrammarManager.abort_requests(SimpleNamespace(grammar_queue=[req]), AbortReq(rid="r1"))
    assert req.to_finish.to_json()["status_code"] == HTTPStatus.BAD_REQUEST  # what SGLang files it under
    req.finished_reason, req.to_finish = req.to_finish, None  # as the prefill's result processing does
    _count_usage(req)
    assert [(r["error"], r["cancelled"]) for r in recorded] == [CANCELLED]
