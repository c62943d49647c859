"""What the OpenAI ``model`` field names, with the plugin on.

``"tiny"`` (the served model name) selects the base model; ``"tiny:a1"`` and the
bare ``"a1"`` both select adapter ``a1``. Stock SGLang serves the base model
for a bare unknown name; here a bare name is always an adapter id, checked
against the id rules (400) and against the adapters the server knows (404).
"""

from __future__ import annotations

from sglang_mint.catalog.ids import validate_adapter_id
from sglang_mint.errors import InvalidAdapterId, shown


def adapter_from_model(model: str, served_model_name: str) -> str | None:
    """The adapter id a ``model`` value names, or None for the base model.

    Examples with served name ``tiny``: ``tiny`` -> None, ``tiny:a1`` -> ``a1``,
    ``a1`` -> ``a1``, ``acme/a1`` -> ``acme/a1``; as in SGLang, ``tiny:`` (nothing
    after the colon) is the base model and ``tiny: a1`` is ``a1``; ``../x`` and
    ``other:a1`` raise InvalidAdapterId.
    """
    if model == served_model_name:
        return None
    prefix = served_model_name + ":"
    if model.startswith(prefix):
        adapter_id = model[len(prefix):].strip()
        return _adapter_id(adapter_id, served_model_name) if adapter_id else None
    if ":" in model:
        other = model.split(":", 1)[0]
        raise InvalidAdapterId(
            f"model {shown(model, 64)}: {shown(other, 64)} is not the served model name {served_model_name!r} "
            f"(use {prefix}<adapter-id> or the bare adapter id)"
        )
    return _adapter_id(model, served_model_name)


def _adapter_id(named: str, served_model_name: str) -> str:
    """``named`` if it is an adapter id; an ``id@N`` is refused saying where a revision goes."""
    adapter_id, at, revision = named.rpartition("@")
    if at and revision.isascii() and revision.isdigit() and len(revision) <= 10 and adapter_id and "@" not in adapter_id:
        try:
            validate_adapter_id(adapter_id)
        except InvalidAdapterId:
            pass
        else:
            raise InvalidAdapterId(
                f"model {shown(named, 160)} names revision {revision} of {shown(adapter_id, 160)}: model takes the "
                f"adapter id alone (its current revision); to pin a revision, send model {served_model_name!r} and "
                f"lora_path {shown(named, 160)} (with the openai client, extra_body={{'lora_path': ...}})")
    return validate_adapter_id(named)


def answered_model(request_model: str, lora_path, requested: str | None, served_model_name: str) -> str:
    """The ``model`` an answer names: ``requested`` when the gateway rewrote it (the header
    ``gateway/middleware.py:REQUESTED_MODEL_HEADER``), else ``request_model``.

    Through SMG ``{"model": "acme/bot"}`` reaches the engine as ``{"model": "tiny", "lora_path":
    "acme/bot"}`` with ``requested = "acme/bot"``: the answer says ``acme/bot``, as it does when the
    client talks to the engine itself. ``requested`` is taken only when it names the very adapter
    ``lora_path`` does (``tiny:``, the base model, when there is none), so the header cannot make
    an answer name anything else.
    """
    if requested is None or request_model != served_model_name:
        return request_model
    try:
        asked = adapter_from_model(requested, served_model_name)
    except InvalidAdapterId:
        return request_model
    return requested if asked == (lora_path if isinstance(lora_path, str) else None) else request_model
