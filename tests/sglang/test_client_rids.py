"""A client's rid never ends another tenant's request (sglang/client_rids.py): SGLang aborts every request whose rid
starts with an aborted one's. A rid that is a proper prefix of the rids SGLang makes is refused, and a hang-up's
abort that would end another request in flight is not sent. A real server: tests/sglang/test_bad_inputs.py
(test_a_short_hex_rid_cannot_cancel_another_tenant_s_request,
test_a_client_s_hang_up_cancels_no_request_whose_rid_extends_its_rid)."""

import asyncio
import uuid
from types import SimpleNamespace

import pytest

from sglang_mint.sglang.client_rids import (ADAPTER_WARM_UP_RID_HEAD, OWN_RID_HEAD, _before_generate_request,
                                           adapter_warm_up_rid, is_server_rid, refuse_prefix_rids, refuse_reserved_rids)


@pytest.mark.parametrize("rid", ["", "a", "0" * 31, "deadbeef", ["job-1", "a1"]])
def test_a_prefix_of_sglang_s_rids_is_refused(rid):
    with pytest.raises(ValueError, match="is a prefix of the request ids SGLang makes"):
        refuse_prefix_rids(rid)


# fixed values: every pytest-xdist worker must collect the same ids (a uuid made here differed)
@pytest.mark.parametrize("rid", [None, "65f2cc20ea6f47b6ac793ff0be2c440d", "0" * 32, "job-7-step-3", "A1",
                                 ["job-1", "job-2"]])
def test_any_other_rid_is_left_as_written(rid):
    refuse_prefix_rids(rid)  # no ValueError: no rid SGLang makes starts with it but itself


def test_reserved_rid_heads_are_the_server_s_own():
    """The server's one-token warm-ups of an adapter are not billed (residency._before_add_request_to_queue):
    a client rid of their form would make its request unbilled. SGLang's health checks are dropped unanswered
    by a busy scheduler and their aborts ignored: a client's "HEALTH_CHECK_job" beside a running request was
    never answered. Each is refused from a client; a request the server made may use its own head."""
    made = adapter_warm_up_rid()
    assert is_server_rid(made) and made != adapter_warm_up_rid() and is_server_rid("HEALTH_CHECK_" + "0" * 32)
    for rid, says in ((made, "are the server's own"), (["job-1", "mint-warm-up-"], "are the server's own"),
                      ("HEALTH_CHECK_job", "are SGLang's health checks"), (["HEALTH_CHECKx"], "health checks")):
        with pytest.raises(ValueError, match=says):
            refuse_reserved_rids(SimpleNamespace(rid=rid))
    for rid in (None, "mint-warm-u", "job-mint-warm-up-1", ["job-1"], "HEALTH-CHECK"):
        refuse_reserved_rids(SimpleNamespace(rid=rid))
        assert not is_server_rid(rid)
    refuse_reserved_rids(SimpleNamespace(rid=made, **{OWN_RID_HEAD: ADAPTER_WARM_UP_RID_HEAD}))  # the server's
    with pytest.raises(ValueError, match="health checks"):  # a warm-up's head lets no health check through
        refuse_reserved_rids(SimpleNamespace(rid="HEALTH_CHECK_x", **{OWN_RID_HEAD: ADAPTER_WARM_UP_RID_HEAD}))


MINT_ON = SimpleNamespace(server_args=SimpleNamespace(_mint=object()))  # a tokenizer manager with --enable-mint


@pytest.mark.parametrize("path, root, own", [("/health_generate", "", True), ("/health", "", True),
                                             ("/sglang/health_generate", "/sglang", True),  # --fastapi-root-path
                                             ("/generate", "", False), ("/health_generate/x", "", False)])
def test_sglang_s_own_health_check_may_use_its_rid_head(path, root, own):
    """SGLang's /health_generate sends its request through TokenizerManager.generate_request with the HTTP
    request; that request, and no other, may use the HEALTH_CHECK head."""
    obj = SimpleNamespace(rid="HEALTH_CHECK_" + "0" * 32)
    _before_generate_request(MINT_ON, obj, SimpleNamespace(url=SimpleNamespace(path=path), scope={"root_path": root}))
    if own:
        refuse_reserved_rids(obj)
    else:
        with pytest.raises(ValueError, match="health checks"):
            refuse_reserved_rids(obj)


def sglang_made_rids() -> list[str]:
    """One rid of each form SGLang makes itself, by its own code: /generate's (uuid4().hex), /v1/responses'
    (``resp_`` + uuid4().hex, ResponsesRequest.request_id) and the health check's (``HEALTH_CHECK_`` + ...)."""
    from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX
    from sglang.srt.entrypoints.openai.protocol import ResponsesRequest
    from sglang.srt.managers.io_struct import GenerateReqInput

    generate = GenerateReqInput(text="hi")
    generate.normalize_batch_and_arguments()
    return [generate.rid, ResponsesRequest(input="hi").request_id, f"{HEALTH_CHECK_RID_PREFIX}_{uuid.uuid4().hex}"]


def test_no_proper_prefix_of_any_rid_sglang_makes_is_taken():
    """A /generate rid "resp_" (not hex) that hung up cancelled every other tenant's /v1/responses request:
    SGLang's rids there are "resp_" + 32 hex digits. Every proper prefix of every form is refused, the rid
    itself is kept."""
    for made in sglang_made_rids():
        refuse_prefix_rids(made)
        kept = [made[:n] for n in range(1, len(made)) if not _refused(made[:n])]
        assert kept == [], f"prefixes of {made!r} taken: {kept}"


def _refused(rid) -> bool:
    try:
        refuse_prefix_rids(rid)
    except ValueError:
        return True
    return False


def test_a_refused_rid_releases_no_lora_id_its_body_wrote():
    """SGLang's cleanup of a request refused before it is sent (TokenizerManager._release_req_states_on_failure)
    releases ``obj.lora_id`` whenever ``lora_path`` is set. A rid refused before the body's ``lora_id`` was
    cleared released "mint:acme/bot@3", which this request never acquired: another tenant's hold on it,
    counted down to 0, let the frontend forget the name under that tenant's request."""
    import asyncio
    from types import SimpleNamespace

    from sglang.srt.managers.io_struct import GenerateReqInput
    from sglang.srt.managers.tokenizer_manager import ReqState, TokenizerManager

    from sglang_mint.sglang.frontend import _around_validate_and_resolve_lora

    obj = GenerateReqInput(text="hi", rid="a", lora_path="acme/bot", lora_id="mint:acme/bot@3")
    obj.normalize_batch_and_arguments()
    released = []

    async def release(lora_id):
        released.append(lora_id)

    async def original(tm, obj):
        raise AssertionError("a refused rid reaches SGLang's resolution")

    async def refused_then_cleaned_up():
        tm = SimpleNamespace(server_args=SimpleNamespace(_mint=object()), enable_lora=True,
                             lora_registry=SimpleNamespace(release=release), _lora_release_tasks=set())
        with pytest.raises(ValueError, match="is a prefix of the request ids"):
            await _around_validate_and_resolve_lora(original, tm, obj)
        state = ReqState.__new__(ReqState)
        state.obj, state.lora_released = obj, False
        task = TokenizerManager._release_lora_once(tm, state)
        if task is not None:
            await task

    asyncio.run(refused_then_cleaned_up())
    assert released in ([], [None]), f"released what the body wrote: {released}"


class InFlight:
    """A tokenizer manager for ``_around_abort_request``: its rids in flight, and the aborts it sent."""

    def __init__(self, *rids: str, mint: bool = True):
        self.server_args = SimpleNamespace(**({"_mint": object()} if mint else {}))
        self.rid_to_state = {rid: SimpleNamespace(obj=None) for rid in rids}  # ReqState: its request is .obj
        self.sent: list[tuple[str, bool]] = []

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:  # as the hook wraps it
        abort(self, rid, abort_all=abort_all)


def abort(tm: InFlight, *args, **kwargs) -> list[tuple[str, bool]]:
    from sglang_mint.sglang.client_rids import _around_abort_request

    def original(tm, rid="", abort_all=False):
        tm.sent.append((rid, abort_all))

    _around_abort_request(original, tm, *args, **kwargs)
    return tm.sent


def test_a_hang_up_s_abort_is_not_sent_while_it_would_end_another_request():
    """SGLang ends every request whose rid starts with the aborted one's: "job" hanging up ended "job-7"."""
    assert abort(InFlight("job", "job-7"), "job") == []
    assert abort(InFlight("job", "jobs"), rid="job") == []


def test_any_other_abort_is_sent_as_sglang_sends_it():
    from sglang_mint.frontend.admin_guard import ADMIN_CALL

    assert abort(InFlight("job", "job-7"), "job-7") == [("job-7", False)]  # nothing else starts with it
    uuid_rid = "65f2cc20ea6f47b6ac793ff0be2c440d"  # SGLang's: only its own requester could extend it
    assert abort(InFlight(uuid_rid, uuid_rid + "-mine"), uuid_rid) == [(uuid_rid, False)]
    assert abort(InFlight("resp_" + uuid_rid, "resp_" + uuid_rid + "x"), "resp_" + uuid_rid) == [
        ("resp_" + uuid_rid, False)]
    assert abort(InFlight(uuid_rid[:31] + "g", uuid_rid[:31] + "g-7"), uuid_rid[:31] + "g") == []  # not hex
    assert abort(InFlight("job", "other", "jo"), "job") == [("job", False)]
    assert abort(InFlight("job"), "job") == [("job", False)]
    assert abort(InFlight("job", "job-7"), abort_all=True) == [("", True)]
    assert abort(InFlight("job", "job-7", mint=False), "job") == [("job", False)]  # the plugin is off
    token = ADMIN_CALL.set("loopback")  # an admin's /abort_request: SGLang's meaning, prefix and all
    try:
        assert abort(InFlight("job", "job-7"), rid="job") == [("job", False)]
    finally:
        ADMIN_CALL.reset(token)


def test_a_finished_answer_s_late_abort_reaches_only_its_own_requests():
    """SGLang's task aborts each rid of a streamed answer still in rid_to_state 2 s after the stream ended; a
    rid there may be a newer request's. A real server: test_a_finished_stream_s_rid_taken_by_another_request_..."""
    from unittest import mock

    from sglang.srt.managers import tokenizer_manager
    from sglang.srt.managers.io_struct import GenerateReqInput

    from sglang_mint.sglang.client_rids import _around_create_abort_task

    async def no_wait(seconds):
        assert seconds == 2  # SGLang's wait before it aborts

    def after_the_stream(tm, obj):  # SGLang's own task, in the hook, less its 2 s wait
        tasks = _around_create_abort_task(tokenizer_manager.TokenizerManager.create_abort_task, tm, obj)
        with mock.patch.object(tokenizer_manager, "asyncio", SimpleNamespace(sleep=no_wait)):
            asyncio.run(tasks())
        return tm.sent

    answer = GenerateReqInput(text="hi", rid="task")
    answer.normalize_batch_and_arguments()
    newer = InFlight("task")
    newer.rid_to_state["task"] = SimpleNamespace(obj=GenerateReqInput(text="hi", rid="task"))
    assert after_the_stream(newer, answer) == []  # another request's now
    own = InFlight("task")
    own.rid_to_state["task"] = SimpleNamespace(obj=answer)
    assert after_the_stream(own, answer) == [("task", False)]  # its own, still running: its client left
    batch = GenerateReqInput(text=["a", "b"], rid=["t1", "t2"])
    batch.normalize_batch_and_arguments()
    both = InFlight("t1", "t2")
    both.rid_to_state.update(t1=SimpleNamespace(obj=batch[0]), t2=SimpleNamespace(obj=GenerateReqInput(text="x")))
    assert after_the_stream(both, batch) == [("t1", False)]


def test_the_scheduler_s_timeouts_are_warned_of_as_the_server_starts(monkeypatch, caplog):
    from sglang_mint.sglang.client_rids import warn_of_scheduler_timeouts

    with caplog.at_level("WARNING", logger="sglang_mint"):
        warn_of_scheduler_timeouts()  # both off: SGLang's default
        assert caplog.records == []
        monkeypatch.setenv("SGLANG_REQ_RUNNING_TIMEOUT", "30")
        warn_of_scheduler_timeouts()
    [record] = caplog.records
    assert record.getMessage().startswith("SGLANG_REQ_RUNNING_TIMEOUT set: SGLang's scheduler aborts")
    assert '"job" ends "job-7"' in record.getMessage()
