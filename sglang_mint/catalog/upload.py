"""An adapter handed over as files: an HTTP upload, received into temp files (upload_stream.py).

Two forms are accepted, by file name:

* PEFT: ``adapter_config.json`` + ``adapter_model.safetensors`` (what
  ``PeftModel.save_pretrained`` writes);
* packed: ``adapter.mintpack`` alone (``mint pack`` writes it; its header
  carries the PEFT config, see sglang_mint/packed/format.py).

Anything else is refused before a byte is written, with a message naming the
file: a pickle (``adapter_model.bin``, ``.pt``, ...), a missing half of the
PEFT pair, both forms at once, an unknown file name. Then every check of
``mint catalog publish`` runs (adapters/peft.py: check_peft_bytes), plus the
server's own limit on rank when the caller gives one.

The weights stay in their file: only the safetensors header is read to check
them (check_peft_file), and the catalog hashes and copies the file without
holding it in memory, so publishing a 1 GiB adapter takes a small constant of
memory. A packed upload, or ``pack=True``, is converted in memory: about twice
the adapter's size while it runs.

Example: ``publish_files(cat, "acme/bot", {"adapter_config.json": "/tmp/u/0",
"adapter_model.safetensors": "/tmp/u/1"}, max_rank=64)`` returns revision 4 of
acme/bot, now current; a rank-128 adapter raises RankTooLarge and writes nothing.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

from sglang_mint.adapters.errors import BaseModelMismatch, InvalidAdapter
from sglang_mint.adapters.folder_form import PACKED
from sglang_mint.adapters.peft import CONFIG, WEIGHTS, PeftAdapter, check_peft_bytes, check_peft_file

if TYPE_CHECKING:
    from sglang_mint.catalog.catalog import Catalog
    from sglang_mint.catalog.store import Revision

ACCEPTED = (CONFIG, WEIGHTS, PACKED)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_CONFIG_BYTES = 1 << 20  # adapter_config.json is a few KB; it is the one file read whole


class RankTooLarge(InvalidAdapter):
    """A valid adapter whose rank is above what the server's LoRA pool holds (--max-lora-rank)."""

    http_status = 422


def rank_above_max(rank: int, max_rank: int) -> str:
    """The refusal of a rank the server's LoRA pool cannot hold, at upload and at load alike."""
    return (f"rank {rank} is above this server's --max-lora-rank {max_rank}; train at rank {max_rank} or less, "
            "or restart the server with a larger --max-lora-rank")


def served_rank(peft: PeftAdapter) -> int:
    """The rank SGLang's pool must hold for this adapter: the largest module rank.

    Example: r=8 with rank_pattern {"v_proj": 16} serves at rank 16 (adapters/uniform_rank.py pads the rest)."""
    config = json.loads(peft.config_bytes)
    return max([int(config["r"]), *(int(r) for r in (config.get("rank_pattern") or {}).values())])


def upload_folder(catalog: "Catalog") -> str:
    """Where uploads are received: ``uploads/`` beside the catalog's views, on this engine's disk."""
    return os.path.join(os.path.dirname(os.path.abspath(catalog.views)), "uploads")


def check_file_name(name: str, where: str) -> None:
    """Refuse a file an adapter upload never holds, as soon as its name is known."""
    if name.endswith(PICKLE_SUFFIXES):
        raise InvalidAdapter(f"{where}: {name} is a pickle file and is refused (it can run code when "
                             f"loaded); send {WEIGHTS} (PeftModel.save_pretrained writes it by default)")
    if name not in ACCEPTED:
        raise InvalidAdapter(f"{where}: unexpected file(s) {name!r}; send {CONFIG} and {WEIGHTS}, or {PACKED} alone")


def adapter_from_files(files: dict[str, str], catalog: "Catalog", where: str) -> tuple[PeftAdapter, bool]:
    """Check an uploaded adapter ({file name: path of its bytes}) completely; return (the adapter in
    PEFT form, whether it came packed). PEFT weights stay in their file."""
    for name in sorted(files):
        check_file_name(name, where)
    if PACKED in files:
        if WEIGHTS in files or CONFIG in files:
            raise InvalidAdapter(f"{where}: send either {PACKED} alone or {CONFIG} + {WEIGHTS}, not both forms")
        with open(files[PACKED], "rb") as f:
            config_bytes, weights = _unpack(f.read(), catalog, f"{where}/{PACKED}")
        return check_peft_bytes(config_bytes, weights, catalog.base, where), True
    for name in (CONFIG, WEIGHTS):
        if name not in files:
            raise InvalidAdapter(f"{where}: missing {name} (a PEFT adapter is {CONFIG} + {WEIGHTS})")
    if os.path.getsize(files[CONFIG]) > MAX_CONFIG_BYTES:
        raise InvalidAdapter(f"{where}/{CONFIG}: {os.path.getsize(files[CONFIG])} bytes; an adapter config is a "
                             f"small JSON object (at most {MAX_CONFIG_BYTES} bytes)")
    with open(files[CONFIG], "rb") as f:
        config_bytes = f.read()
    return check_peft_file(config_bytes, files[WEIGHTS], catalog.base, where), False


def publish_files(catalog: "Catalog", adapter_id: str, files: dict[str, str], *, metadata: dict | None = None,
                  expect_revision: int | None = None, pack: bool | None = None,
                  max_rank: int | None = None, where: str = "upload", digests: dict | None = None,
                  stage=None) -> "Revision":
    """Check and publish an adapter given as files ({file name: path}); the new revision is current
    when this returns. The files are the caller's to delete afterwards.

    ``pack`` None keeps the form it came in; True stores a PEFT upload packed. ``max_rank`` refuses
    an adapter the serving pool cannot hold (RankTooLarge). Nothing is written unless every check passes.
    ``digests``: {file name: sha256} taken while the files were received; ``stage``: record the
    revision before its blobs are stored (durable=false, see Catalog._publish)."""
    peft, came_packed = adapter_from_files(files, catalog, where)
    rank = served_rank(peft)
    if max_rank is not None and rank > max_rank:
        raise RankTooLarge(f"{where}: {rank_above_max(rank, max_rank)}")
    if came_packed if pack is None else pack:
        return catalog.publish_packed(adapter_id, peft, metadata, expect_revision, where=where, stage=stage)
    return catalog.publish_peft(adapter_id, peft, metadata, expect_revision,
                                weights_digest=(digests or {}).get(WEIGHTS), stage=stage)


def _unpack(data: bytes, catalog: "Catalog", where: str) -> tuple[bytes, bytes]:
    """A mintpack's source PEFT files, after checking it was converted for this catalog's base model."""
    try:
        import safetensors.torch

        from sglang_mint.packed.convert import unpack_tensors
        from sglang_mint.packed.format import PackedError, decode_header
    except ImportError as exc:
        raise InvalidAdapter(f"{where}: reading a packed adapter needs torch ({exc})") from None

    try:
        _, _, mint = decode_header(data, len(data), where)
    except PackedError as exc:
        raise InvalidAdapter(str(exc)) from None
    theirs = (mint.get("base") or {}).get("identity")
    if theirs and theirs != catalog.base.identity:
        raise BaseModelMismatch(f"{where}: packed for base model {theirs!r}; this catalog serves "
                                f"{catalog.base.name!r} ({catalog.base.identity})")
    if not isinstance(mint.get("peft_config"), dict):
        raise InvalidAdapter(f"{where}: the packed header has no peft_config")
    try:
        tensors = unpack_tensors(mint, safetensors.torch.load(bytes(data)), where, catalog.base.num_experts or 0)
        weights = safetensors.torch.save(tensors)
    except Exception as exc:  # noqa: BLE001 - any parser or layout complaint means a corrupt file
        raise InvalidAdapter(f"{where}: corrupt packed adapter ({type(exc).__name__}: {exc})") from None
    return json.dumps(mint["peft_config"]).encode(), weights
