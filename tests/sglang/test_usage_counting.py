"""Which adapter a request is billed to, how often, and for which tokens: the glue's counting
(residency.py, frontend.py) on SGLang 0.5.23's own request objects. No server.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import inspect
from array import array
from types import SimpleNamespace

import pytest
from sglang.srt import runtime_context
from sglang.srt.disaggregation.utils import DisaggregationMode
from sglang.srt.managers.io_struct import AbortReq, GenerateReqInput
from sglang.srt.managers.schedule_batch import FINISH_LENGTH, Req
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.sampling.sampling_params import SamplingParams

from sglang_mint.sglang import hooks, residency

MINT_ON = SimpleNamespace(_mint=object())  # server_args with --enable-mint (flags.mint_config)
COUNTING = SimpleNamespace(_mint_usage=object())  # a scheduler with a usage ledger


def validated_as_served(tm, obj) -> None:
    """TokenizerManager._validate_and_resolve_lora as a server runs it: SGLang's own, inside the
    hooks HOOKS puts around it (none are applied in this process)."""
    call = inspect.unwrap(TokenizerManager._validate_and_resolve_lora)
    for row in hooks.HOOKS:
        if row.target == f"{hooks._TM}._validate_and_resolve_lora":
            assert row.kind == "AROUND"
            module, name = row.function.split(":")
            call = functools.partial(getattr(importlib.import_module(f"sglang_mint.sglang.{module}"), name), call)
    asyncio.run(call(tm, obj))


def test_a_request_body_does_not_choose_the_lora_id_it_is_served_and_billed_under():
    """``POST /generate {"text": "hi", "lora_id": "mint:acme/bot@3"}``: with no lora_path SGLang
    resolves nothing and sends the body's id on, so the scheduler served and billed acme/bot@3
    without the catalog being asked (and stopped at ``"mint:x"``, which names no revision)."""
    tm = SimpleNamespace(server_args=MINT_ON, enable_lora=True, enable_metrics=False)
    one = GenerateReqInput(text="hi", lora_id="mint:acme/bot@3")
    one.normalize_batch_and_arguments()
    validated_as_served(tm, one)
    assert one.lora_id is None

    batch = GenerateReqInput(text=["hi", "yo"], lora_id=["mint:acme/bot@3", "mint:x"])
    batch.normalize_batch_and_arguments()
    first = batch[0]  # a prompt SGLang split off before the check
    validated_as_served(tm, batch)
    assert batch.lora_id is None and first.lora_id is None and batch[1].lora_id is None

    stock = GenerateReqInput(text="hi", lora_id="0123")  # without --enable-mint: SGLang's own behaviour
    stock.normalize_batch_and_arguments()
    validated_as_served(SimpleNamespace(server_args=SimpleNamespace(), enable_lora=True), stock)
    assert stock.lora_id == "0123"


def new_req(prompt_len: int) -> Req:
    return Req("r1", "", array("q", range(1, prompt_len + 1)), SamplingParams(max_new_tokens=8))


def abort_counted(req: Req, finished_reason: dict | None) -> dict:
    """What the ledger records for ``req`` when the scheduler reports its abort (send_abort_output)."""
    recorded = []
    req._mint_usage = (SimpleNamespace(record=lambda *args, **counts: recorded.append(counts)), "acme/bot", 3)
    residency._after_send_abort_output(None, SimpleNamespace(), AbortReq(rid=req.rid, finished_reason=finished_reason),
                                       req)
    [counts] = recorded
    return counts


def test_a_request_ended_in_the_queue_before_its_prefill_bills_no_tokens():
    """The queue full (503), or its client gone while it waited: SGLang ends it with send_abort_output
    before anything ran, and its whole prompt was billed, as uncached tokens."""
    full = {"type": "abort", "status_code": 503, "message": "The request queue is full."}
    nothing = {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0, "requests": 1}
    assert abort_counted(new_req(40), full) == {**nothing, "error": True, "cancelled": False}
    assert abort_counted(new_req(40), None) == {**nothing, "error": False, "cancelled": True}  # a hang-up

    chunked = new_req(40)  # a chunked prefill aborted after its first chunk: computed
    chunked.already_computed = 16
    assert abort_counted(chunked, None)["prompt_tokens"] == 40
    retracted = new_req(40)  # ran, then was retracted to the queue, then aborted there
    retracted.already_computed = 40
    retracted.output_ids.extend([7, 8])
    retracted.reset_for_retract()
    assert abort_counted(retracted, full) == {"prompt_tokens": 40, "cached_tokens": 0, "completion_tokens": 2,
                                              "error": True, "cancelled": False, "requests": 1}


def test_n_choices_count_one_request_each_and_their_prompt_once():
    """SGLang serves n > 1 as a warm-up of the prompt (0 new tokens) and one request per choice, each
    with the whole prompt; a real server: tests/sglang/test_usage_ledger.py."""
    def finished(n: int, max_new_tokens: int, cached: int, made: int, cut_to: int | None = None) -> dict:
        req = Req("r1", "", array("q", range(1, 41)), SamplingParams(max_new_tokens=max_new_tokens, n=n))
        residency._before_init_req_max_new_tokens(COUNTING, req)
        if cut_to is not None:  # by Scheduler.init_req_max_new_tokens: the context or the KV memory
            req.sampling_params.max_new_tokens = cut_to
        req.cached_tokens, req.finished_reason = cached, FINISH_LENGTH(length=made)
        req.output_ids.extend(range(made))
        recorded = []
        req._mint_usage = (SimpleNamespace(record=lambda *args, **counts: recorded.append(counts)), "acme/bot", 3)
        residency._count_usage(req)
        [counts] = recorded
        return {k: counts[k] for k in ("requests", "prompt_tokens", "cached_tokens", "completion_tokens")}

    assert finished(1, 8, 16, 8) == {"requests": 1, "prompt_tokens": 40, "cached_tokens": 16, "completion_tokens": 8}
    assert finished(3, 0, 16, 0) == {"requests": 0, "prompt_tokens": 40, "cached_tokens": 16, "completion_tokens": 0}
    assert finished(3, 8, 39, 8) == {"requests": 1, "prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 8}
    assert finished(1, 0, 16, 0)["requests"] == 1  # 0 new tokens, one choice: a request (a prompt scored)
    # a choice of a prompt that fills the context, cut to 0 new tokens: still a choice
    assert finished(3, 8, 39, 0, cut_to=0) == {"requests": 1, "prompt_tokens": 0, "cached_tokens": 0,
                                               "completion_tokens": 0}

    full = {"type": "abort", "status_code": 503, "message": "The request queue is full."}
    warm_up = Req("r1", "", array("q", range(1, 41)), SamplingParams(max_new_tokens=0, n=3))
    residency._before_init_req_max_new_tokens(COUNTING, warm_up)
    assert abort_counted(warm_up, full)["requests"] == 1  # a non-streamed one: no choice follows, it is the request
    ran = Req("r1", "", array("q", range(1, 41)), SamplingParams(max_new_tokens=0, n=3))
    residency._before_init_req_max_new_tokens(COUNTING, ran)
    ran.already_computed = 16  # its client hung up in its chunked prefill: 16 tokens computed
    assert abort_counted(ran, None) == {"prompt_tokens": 40, "cached_tokens": 0, "completion_tokens": 0,
                                        "error": False, "cancelled": True, "requests": 1}
    stock = Req("r1", "", array("q", range(1, 41)), SamplingParams(max_new_tokens=0, n=3))
    residency._before_init_req_max_new_tokens(SimpleNamespace(), stock)  # no ledger: the plugin off
    assert not hasattr(stock, "_mint_warm_up")
    choice = Req("r1", "", array("q", range(1, 41)), SamplingParams(max_new_tokens=8, n=3))
    choice.already_computed = 40
    assert abort_counted(choice, None) == {"prompt_tokens": 0, "cached_tokens": 0, "completion_tokens": 0,
                                           "error": False, "cancelled": True, "requests": 1}


# (pp_rank, attn_tp_rank, attn_dp_rank, attn_dp_size, dp_rank) -> the ledger's engine name, None: no ledger
RANKS = [((0, 0, 0, 1, None), "dp0"), ((1, 0, 0, 1, None), None),  # the second pipeline stage runs, not answers
         ((0, 1, 0, 1, None), None),  # a tensor-parallel rank past the first
         ((0, 0, 0, 1, 2), "dp2"),  # the third of --dp-size replicas
         ((0, 0, 1, 2, None), "dp1"), ((0, 1, 1, 2, None), None)]  # --enable-dp-attention: groups 0 and 1


@pytest.mark.parametrize("ranks, name, mode", [(ranks, name, "null") for ranks, name in RANKS]
                         + [((0, 0, 0, 1, None), None, "prefill"), ((0, 0, 0, 1, None), "dp0", "decode")])
def test_one_ledger_per_rank_that_answers(tmp_path, monkeypatch, ranks, name, mode):
    """Each pipeline stage runs every request, and each stage's first rank is rank 0 of its own
    tensor-parallel group: with --pp-size 2 both stages kept a ledger, under one engine name, and
    every request was counted twice. With --enable-dp-attention every attention group's first rank
    takes and answers its own requests, all in one tp_group: only the first group's were counted.
    The ledger is kept where SGLang answers: one per replica and attention group, on the decode server of
    prefill-decode disaggregation (the prefill server also ends each request it hands over)."""
    from sglang_mint.config import MintConfig

    pp_rank, attn_tp_rank, attn_dp_rank, attn_dp_size, dp_rank = ranks
    monkeypatch.setattr(hooks, "verify_startup", lambda *args, **kwargs: None)  # no hooks applied here
    monkeypatch.setattr(residency, "before_sigterm", lambda handler: None)  # pytest keeps its SIGTERM
    monkeypatch.setattr(runtime_context, "get_parallel", lambda: SimpleNamespace(
        pp_rank=pp_rank, attn_tp_rank=attn_tp_rank, attn_cp_rank=0, attn_dp_rank=attn_dp_rank,
        attn_dp_size=attn_dp_size, dp_rank=dp_rank))
    scheduler = SimpleNamespace(enable_lora=False, disaggregation_mode=DisaggregationMode(mode),
                                server_args=SimpleNamespace(_mint=MintConfig.from_flags(usage_dir=str(tmp_path)),
                                                            host="127.0.0.1", port=30000))
    residency._after_scheduler_init(None, scheduler)
    ledger = getattr(scheduler, "_mint_usage", None)
    assert (None if ledger is None else ledger.engine.rsplit("_", 1)[-1]) == name
    if ledger is not None:
        ledger.close()
