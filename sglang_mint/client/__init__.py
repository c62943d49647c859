"""Hand a freshly trained adapter to a running server: publish, roll back, wait until served.

::

    from sglang_mint.client import MintClient

    mint = MintClient("http://127.0.0.1:30000")
    pub = mint.publish("acme/bot", peft_model)         # a PeftModel in memory; nothing is written to disk here
    mint.wait_until_served("acme/bot", pub.revision)   # optional: returns once a request was served by it
    mint.rollback("acme/bot")                          # back to the revision before

``publish`` also takes a state dict with its ``LoraConfig`` (what
``peft.get_peft_model_state_dict`` returns), or a folder that
``save_pretrained`` wrote. The server checks it as ``mint catalog publish``
does and stores it as an immutable revision, so every handoff can be rolled
back. ``MintPublishCallback`` (client/trainer.py) does this from a
``transformers`` Trainer every N steps.

Only the standard library is needed to talk to the server; torch, safetensors
and peft are imported when an in-memory model is published.
"""

from __future__ import annotations

import asyncio
import errno
import http.client
import json
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass
from typing import Any, Mapping

from sglang_mint.adapters.folder_form import PACKED, packed_file
from sglang_mint.catalog.metadata import check_metadata
from sglang_mint.client.handoff import Inbox, safetensors_parts, size_of
from sglang_mint.errors import MintError

JOIN_BELOW_BYTES = 8 << 20
PUBLISHED_KEYS = ("adapter_id", "revision", "digest")  # of a publish's or rollback's answer
_NOT_JSON = object()
CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


class MintAPIError(MintError):
    """The server refused a call; ``status`` is its HTTP status and the message is the server's."""

    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status = status
        self.http_status = status
        self.message = message


class MintUnreachable(MintError, ConnectionError):
    """Nothing answered at the client's URL: no server listens on that port, the host is unknown, or
    no route reaches it; the socket's error is ``__cause__``. Not a MintAPIError: no server
    refused anything (a caller such as gateway/smg.py tells the two apart). A ConnectionError too, so
    code that caught urllib's URLError (an OSError) still catches it."""

    http_status = 503  # what a gateway answers for a server it cannot reach


def _nobody_there(reason) -> bool:
    """A connection that never opened: refused, an unknown host, no route. Not a pipe a server broke
    answering before it read the body (401, 413, 429 to a large upload), which urllib cannot read."""
    return (isinstance(reason, (ConnectionRefusedError, socket.gaierror))
            or getattr(reason, "errno", None) in (errno.EHOSTUNREACH, errno.ENETUNREACH))


@dataclass(frozen=True)
class Published:
    adapter_id: str
    revision: int
    digest: str | None  # None for durable=False: the server hashes the files when it stores them
    format: str = "peft"

    @property
    def name(self) -> str:
        """The name that selects exactly this revision (``lora_path``), e.g. ``acme/bot@4``."""
        return f"{self.adapter_id}@{self.revision}"


def adapter_files(source: Any, lora_config: Any = None, adapter_name: str = "default") -> dict[str, bytes | list]:
    """The files of an adapter, in memory, from whichever form the trainer holds: each file's bytes,
    or (the weights of a model in memory) the list of buffers it is made of (handoff.py).

    - a folder written by ``save_pretrained`` (or ``mint pack``): its files;
    - a ``PeftModel``: its LoRA weights for ``adapter_name`` and its config;
    - a mapping of tensors as ``get_peft_model_state_dict`` returns it
      (``...q_proj.lora_A.weight``), with ``lora_config`` (a ``LoraConfig`` or a dict).
    """
    if isinstance(source, (str, os.PathLike)):
        return _folder_files(os.fspath(source))
    if hasattr(source, "peft_config"):
        from peft import get_peft_model_state_dict

        if adapter_name not in source.peft_config:
            raise MintError(f"the model has no adapter {adapter_name!r} (it has {sorted(source.peft_config)})")
        tensors = get_peft_model_state_dict(source, adapter_name=adapter_name)
        lora_config = source.peft_config[adapter_name]
    elif isinstance(source, Mapping):
        if lora_config is None:
            raise MintError("publishing a state dict needs its lora_config (a peft LoraConfig or its dict)")
        tensors = source
    else:
        raise MintError(f"cannot publish a {type(source).__name__}: pass a PeftModel, a state dict with "
                        "lora_config, or a folder")
    return {CONFIG: config_json(lora_config), WEIGHTS: safetensors_parts(tensors)}


def config_json(lora_config: Any) -> bytes:
    """``adapter_config.json`` bytes for a ``LoraConfig`` or a dict, as ``save_pretrained`` writes it."""
    config = lora_config.to_dict() if hasattr(lora_config, "to_dict") else dict(lora_config)

    def plain(value):
        if isinstance(value, (set, frozenset)):
            return sorted(value)
        if hasattr(value, "value"):  # enums (PeftType.LORA, TaskType)
            return value.value
        raise TypeError(f"{type(value).__name__} is not JSON serializable")

    return json.dumps(config, default=plain, sort_keys=True).encode()


def _folder_files(folder: str) -> dict[str, bytes]:
    if not os.path.isdir(folder):
        raise MintError(f"{folder!r} is not a folder (a PEFT adapter folder is expected)")
    if packed_file(folder) is not None:  # InvalidAdapter (a MintError) for PEFT weights beside it
        names = [PACKED]  # a packed folder's adapter_config.json is derived from the packed file
    else:
        names = [n for n in (CONFIG, WEIGHTS) if os.path.isfile(os.path.join(folder, n))]
    if not names:
        raise MintError(f"{folder!r} holds neither {CONFIG} + {WEIGHTS} nor {PACKED}")
    out = {}
    for name in names:
        with open(os.path.join(folder, name), "rb") as f:
            out[name] = f.read()
    return out


def multipart(files: dict[str, bytes | list], fields: dict[str, str]) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data upload: every file under the field ``files``."""
    parts, content_type = multipart_parts(files, fields)
    return b"".join(parts), content_type


def multipart_parts(files: dict[str, bytes | list], fields: dict[str, str]) -> tuple[list, str]:
    """``multipart`` as the list of buffers the body is made of, the files' own among them (not joined)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode())
    for name, data in files.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{name}"\r\n'
                     "Content-Type: application/octet-stream\r\n\r\n".encode())
        parts.extend(data if isinstance(data, list) else [data])
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return parts, f"multipart/form-data; boundary={boundary}"


class MintClient:
    """The admin side of one server: ``url`` is its base, e.g. ``http://127.0.0.1:30000``.

    ``admin_api_key`` is the server's ``--admin-api-key`` (a server without one
    takes admin calls from its own machine only); ``api_key`` its ``--api-key``,
    used for the request ``wait_until_served`` sends. A server on this machine takes a publish's
    files through shared memory (client/handoff.py); ``shared_memory=False`` sends them in the body.
    """

    def __init__(self, url: str, admin_api_key: str | None = None, api_key: str | None = None,
                 timeout: float = 600.0, shared_memory: bool = True):
        self.url = url.rstrip("/")
        self.admin_api_key = admin_api_key
        self.api_key = api_key
        self.timeout = timeout
        self._inbox_answer: dict | None = None if shared_memory else {}

    # -- calls ---------------------------------------------------------------
    def publish(self, adapter_id: str, source: Any, *, lora_config: Any = None, adapter_name: str = "default",
                expected_revision: int | None = None, metadata: dict | None = None, pack: bool | None = None,
                warm: bool | None = None, durable: bool = True) -> Published:
        """Publish ``source`` as the next revision of ``adapter_id``; it is current when this returns.

        ``expected_revision`` refuses (409) unless the new revision gets that number.
        ``durable=False`` (an RL step) answers once the revision is recorded and handed to the
        engine in memory; its blob is stored after the answer, and a revision whose blob was
        never stored (the server stopped first) is not served after a restart: the one before
        it is. ``warm`` (the server's default: as ``durable``) has it load the revision at once,
        with a one-token request; an RL step's own sampling requests load it as they arrive,
        and a warm request beside them only adds its forward (on CPU, in one run: the handoff
        less a warm forward took 61 ms at rank 8 and 165 ms at rank 64 without it, 91 and
        195 ms with it; bench/handoff_bench.py at 2401008)."""
        fields = {} if warm is None else {"warm": "true" if warm else "false"}  # None: the server's default
        if not durable:
            fields["durable"] = "false"
        if expected_revision is not None:
            fields["expected_revision"] = str(int(expected_revision))
        if metadata is not None:
            check_metadata(metadata)  # NaN (a logged loss), numpy numbers: named here, not a 400 or a TypeError
            fields["metadata"] = json.dumps(metadata)
        if pack is not None:
            fields["pack"] = "true" if pack else "false"
        files = adapter_files(source, lora_config, adapter_name)
        inbox = self._inbox()
        if inbox is not None:  # the server is on this machine: the files go through shared memory
            try:
                fields["inbox"] = inbox.put({name: data if isinstance(data, list) else [data]
                                             for name, data in files.items()})
                files = {}
            except OSError:  # full, or gone: send them in the body
                pass
        body, content_type = multipart_parts(files, fields)
        try:
            answer = self._call("POST", f"/mint/adapters/{_quote(adapter_id)}/revisions", body, content_type,
                                keys=PUBLISHED_KEYS)
        except BaseException:
            if "inbox" in fields:  # refused before the server took the folder (401, 429): not left in RAM
                inbox.discard(fields["inbox"])
            raise
        return Published(answer["adapter_id"], answer["revision"], answer["digest"], answer.get("format", "peft"))

    async def publish_served(self, adapter_id: str, source: Any, *, timeout: float = 120.0, **kwargs) -> Published:
        """``publish`` (same arguments), then ``wait_until_served``: returns once a request for the
        new revision has been served, without blocking the caller's event loop."""
        pub = await asyncio.to_thread(self.publish, adapter_id, source, **kwargs)
        await asyncio.to_thread(self.wait_until_served, adapter_id, pub.revision, timeout)
        return pub

    def _inbox(self) -> Inbox | None:
        """The server's shared-memory inbox if it is on this machine (asked once)."""
        if self._inbox_answer is None:
            try:
                self._inbox_answer = self._call("GET", "/mint/inbox") or {}
            except MintUnreachable:  # the call itself says so, naming its own request; asked again next time
                return None
            except MintAPIError as exc:
                if exc.status in (401, 403):  # the publish would be refused alike: say so now
                    raise
                self._inbox_answer = {}  # 404: no shared memory there
            except OSError:
                self._inbox_answer = {}
        return Inbox.of(self._inbox_answer)

    def rollback(self, adapter_id: str, to: int | None = None) -> Published:
        """Make revision ``to`` (default: the one before current) current again."""
        body = json.dumps({"to": to}).encode() if to is not None else b""
        answer = self._call("POST", f"/mint/adapters/{_quote(adapter_id)}/rollback", body, "application/json",
                            keys=PUBLISHED_KEYS)
        return Published(answer["adapter_id"], answer["revision"], answer["digest"], answer.get("format", "peft"))

    def adapter(self, adapter_id: str) -> dict:
        """``{"adapter_id", "current", "latest", "deleted", "revisions": [...]}``."""
        return self._call("GET", f"/mint/adapters/{_quote(adapter_id)}", keys=("adapter_id", "current"))

    def usage(self, adapter: str | None = None, since: float | str | None = None, until: float | str | None = None,
              by: str = "minute") -> dict:
        """``GET /mint/usage``: ``{"usage": [rows], "totals": {...}, "engines": [...]}``, rows per
        adapter, revision and minute (``by="adapter"``: per adapter and revision over the span);
        ``since`` and ``until`` are epoch seconds or ISO 8601 moments."""
        query = {name: value for name, value in (("adapter", adapter), ("since", since), ("until", until), ("by", by))
                 if value is not None}
        return self._call("GET", "/mint/usage?" + urllib.parse.urlencode(query))

    def wait_until_served(self, adapter_id: str, revision: int, timeout: float = 120.0) -> float:
        """Return once ``adapter_id`` resolves to ``revision`` and a request for it has been served.

        The request is one token for ``adapter_id@revision``, so the revision is loaded
        when this returns. Returns the seconds waited; MintAPIError on a refusal,
        TimeoutError after ``timeout``."""
        t0 = time.monotonic()
        while self.adapter(adapter_id).get("current") != revision:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{adapter_id!r} did not reach revision {revision} in {timeout:.0f}s")
            time.sleep(0.05)
        probe = {"input_ids": [0], "lora_path": f"{adapter_id}@{revision}",
                 "sampling_params": {"max_new_tokens": 1, "temperature": 0}}
        self._call("POST", "/generate", json.dumps(probe).encode(), "application/json", admin=False,
                   timeout=max(1.0, timeout - (time.monotonic() - t0)))
        return time.monotonic() - t0

    # -- transport -------------------------------------------------------------
    def _call(self, method: str, path: str, body: bytes | list | None = None, content_type: str | None = None,
              admin: bool = True, timeout: float | None = None, keys: tuple[str, ...] = ()) -> Any:
        """The server's answer, parsed; MintUnreachable when nothing answers at ``self.url``;
        MintAPIError for a refusal, and for an answer that is not JSON
        (a proxy's HTML page) or not an object with ``keys``: never ValueError or KeyError, which a
        caller catching MintError (MintPublishCallback) would not expect."""
        headers = {}
        if content_type:
            headers["Content-Type"] = content_type
        key = (self.admin_api_key or self.api_key) if admin else self.api_key
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if isinstance(body, list):
            if size_of(body) <= JOIN_BELOW_BYTES:
                # one send: a server that refuses at once (401, 413, 429) closes the connection, and a
                # body still being sent part by part would see a broken pipe instead of its answer
                body = b"".join(body)
            else:  # large weights: their buffers are sent one after another, never joined
                headers["Content-Length"] = str(size_of(body))
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as r:
                status, raw = r.status, r.read()
        except urllib.error.HTTPError as exc:
            try:
                text = exc.read()
            except http.client.HTTPException as cut:  # an error page cut short
                text = f"(the answer was cut short: {type(cut).__name__})".encode()
            raise MintAPIError(exc.code, _message(text)) from None
        except urllib.error.URLError as exc:
            if not _nobody_there(exc.reason):  # e.g. a broken pipe: a server refused the body as it came
                raise
            reason = getattr(exc.reason, "strerror", None) or str(exc.reason)
            raise MintUnreachable(f"nothing answered at {self.url} ({method} {path}: {reason}); is the server "
                                  "running, and is this its URL (scheme, host and port)?") from exc
        except http.client.HTTPException as exc:  # IncompleteRead, BadStatusLine: neither OSError nor MintError
            raise MintAPIError(502, f"the server's answer to {method} {path} was cut short or garbled "
                                  f"({type(exc).__name__}: {exc})") from None
        answer = _parsed(raw or b"null")
        if answer is _NOT_JSON:
            raise MintAPIError(status, f"the server's answer is not JSON: {raw[:200]!r}")
        missing = [key for key in keys if not (isinstance(answer, dict) and key in answer)]
        if missing:
            listed = " and ".join(filter(None, (", ".join(missing[:-1]), missing[-1])))  # "revision and digest"
            raise MintAPIError(status, f"the server's answer has no {listed}: {raw[:200]!r}")
        return answer


def _quote(adapter_id: str) -> str:
    return urllib.parse.quote(adapter_id, safe="/")


def _parsed(raw: bytes) -> Any:
    """``json.loads(raw)``, or _NOT_JSON: for text that is not JSON, and for JSON nested past the
    recursion limit (``b"[" * 40000``: RecursionError, no ValueError)."""
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        return _NOT_JSON


def _message(raw: bytes) -> str:
    body = _parsed(raw)
    if body is _NOT_JSON:
        return raw.decode(errors="replace")[:2000]
    err = body.get("error", body) if isinstance(body, dict) else body
    if isinstance(err, dict):
        return str(err.get("message") or err.get("detail") or err)
    return str(err)


def __getattr__(name: str):
    if name == "MintPublishCallback":  # needs transformers: imported on first use
        from sglang_mint.client.trainer import MintPublishCallback

        return MintPublishCallback
    raise AttributeError(name)


__all__ = ["MintAPIError", "MintClient", "MintPublishCallback", "MintUnreachable", "Published", "adapter_files"]
