"""typed_ipc's check on SGLang's own request struct and msgpack codec, in this process: each undecodable value is
named by its field, and a request the scheduler can read passes untouched."""

from __future__ import annotations

from array import array

import pytest

from sglang.srt.managers import io_struct
from sglang.srt.managers.io_struct import TokenizedGenerateReqInput
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang_mint.sglang.typed_ipc import ready_for_msgpack


class RevisionLike(str):
    """A str subclass, as the frontend's RevisionName is."""


@pytest.fixture
def msgpack_ipc(monkeypatch):
    monkeypatch.setattr(io_struct, "_USE_PICKLE_IPC", False)


def tokenized(**fields) -> TokenizedGenerateReqInput:
    made = TokenizedGenerateReqInput(
        rid="r", input_text="hi", input_ids=array("l", [5, 6, 7]), input_embeds=None, mm_inputs=None,
        token_type_ids=None, sampling_params=SamplingParams(max_new_tokens=4), return_logprob=False,
        logprob_start_len=-1, top_logprobs_num=0, token_ids_logprob=None, stream=False)
    for name, value in fields.items():
        setattr(made, name, value)
    return made


@pytest.mark.parametrize("fields, named", [
    ({"return_sampling_mask": [True]}, "return_sampling_mask"),
    ({"bootstrap_room": [7]}, "bootstrap_room"),
    ({"rid": 5}, "rid"),
    ({"sampling_params": SamplingParams(max_new_tokens=4, logit_bias={5: 1.0})}, "sampling_params"),  # a dict's key
])
def test_an_undecodable_field_is_named(msgpack_ipc, fields, named):
    with pytest.raises(ValueError, match=f"^{named}: the scheduler cannot read it for one prompt"):
        ready_for_msgpack(tokenized(**fields))


def test_a_readable_request_passes_and_the_plugin_s_strings_go_plain(msgpack_ipc):
    request = tokenized(lora_name=RevisionLike("acme/bot@3"), return_sampling_mask=True, bootstrap_room=7)
    with pytest.raises(TypeError):
        io_struct.msgpack_encode(request)  # what sock_send met: every catalog adapter's request failed
    ready_for_msgpack(request)
    assert type(request.lora_name) is str and request.lora_name == "acme/bot@3"
    assert io_struct.msgpack_decode(io_struct.msgpack_encode(request)).lora_name == "acme/bot@3"


def test_nothing_is_checked_or_changed_under_pickle(monkeypatch):
    monkeypatch.setattr(io_struct, "_USE_PICKLE_IPC", True)
    request = tokenized(lora_name=RevisionLike("acme/bot@3"), return_sampling_mask=[True])
    ready_for_msgpack(request)
    assert type(request.lora_name) is RevisionLike  # its record rides along through pickle
