"""A request SGLang's scheduler could not decode is refused where it arrives, under msgpack IPC.

With ``SGLANG_USE_PICKLE_IPC=0`` the tokenizer manager sends each request to the scheduler as msgpack,
and the scheduler decodes it against the request's declared types (``io_struct.msgpack_decode``). The
HTTP layer declares some of those fields looser than the scheduler does: ``return_sampling_mask``,
``bootstrap_host``, ``bootstrap_room`` and ``sampling_logprobs_mode`` take a list (one value per prompt of
a batch), and on one prompt the list went to the scheduler as it came. Its decode raised in the
scheduler's loop, and **one such body stopped the server** (reproduced with ``--enable-mint`` on CPU:
``{"text": "hi", "return_sampling_mask": [true]}``). With pickle IPC, SGLang's default, they are served.

``refuse_undecodable`` decodes the request as the scheduler will before it is sent: some 10 µs for a
prompt of 4,000 tokens, 110 µs for 128,000 (this machine), and only under msgpack IPC. What the
scheduler would fail on is a ValueError (400) naming the field.

The request's adapter name (``lora_name``, copied from the ``lora_path`` the catalog resolved) is the
frontend's ``RevisionName``, a str subclass that carries the revision's record through pickle; msgpack
encodes no str subclass, so under msgpack every request naming a catalog adapter failed, 500.
``ready_for_msgpack`` sends it as a plain string (the scheduler looks the record up by its id).
"""

from __future__ import annotations

import re

import msgspec

from sglang.srt.managers import io_struct

# Fields the tokenizer manager wraps or moves to shared memory as it sends a request (_send_one_request:
# wrap_pickle_fields, wrap_shm_features, positional_embeds_transport): not checked
PREPARED_AS_SENT = ("time_stats", "mm_inputs", "positional_embed_overrides")
# msgspec's path to what failed: "- at `$[14]`" (the struct's 14th item; its tag is item 0), "- at `$[8][0]`"
# (inside one), "- at `key` in `$[8][23]`" (a dict's key)
_FAILED_AT = re.compile(r" - at .*?`\$\[(\d+)\][^`]*`$")


def ready_for_msgpack(tokenized) -> None:
    """Under msgpack IPC (nothing under pickle: ``io_struct._USE_PICKLE_IPC``, what ``sock_send`` reads), the
    plugin's own strings in ``tokenized`` made plain, then ``refuse_undecodable``."""
    if io_struct._USE_PICKLE_IPC:
        return
    for name in getattr(type(tokenized), "__struct_fields__", ()):
        value = getattr(tokenized, name)
        if isinstance(value, str) and type(value) is not str:  # lora_name: the frontend's RevisionName
            setattr(tokenized, name, str(value))
    refuse_undecodable(tokenized)


def refuse_undecodable(tokenized) -> None:
    """A ValueError naming the field of ``tokenized`` that the scheduler's msgpack decode would fail on."""
    fields = getattr(type(tokenized), "__struct_fields__", ())
    # what SGLang itself prepares for the wire only as it sends the request: no client writes it as it is here
    unsent = {name: None for name in PREPARED_AS_SENT if name in fields}
    try:
        io_struct.msgpack_decode(io_struct.msgpack_encode(msgspec.structs.replace(tokenized, **unsent)))
    except (msgspec.ValidationError, msgspec.DecodeError) as failed:
        raise ValueError(f"{_field_named(type(tokenized), str(failed))}: the scheduler cannot read it for one "
                         f"prompt ({str(failed).split(' - at ')[0]})") from None


def _field_named(struct_type, message: str) -> str:
    """The field of ``struct_type`` (an array-like, tagged msgspec struct) that ``message`` points at."""
    at = _FAILED_AT.search(message)
    fields = getattr(struct_type, "__struct_fields__", ())
    if at is None or not 1 <= int(at.group(1)) <= len(fields):
        return "the request"
    return fields[int(at.group(1)) - 1]
