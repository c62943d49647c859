"""Walks docs/bad-inputs.md: every bad input gets its clear answer, and nothing else suffers.

Requests and damaged catalog entries go to one real server (CPU, --enable-mint, a catalog: the
session's ``shared_catalog_server``, under ids only this module uses); after each, a good adapter
is still served. Imports go to the catalog in this process; the catalog is unchanged after each
refusal. Launch flags are test_plugin.py's cases.
"""

from __future__ import annotations

import http.client
import json
import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from sglang_mint.catalog import init_catalog, open_catalog
from sglang_mint.catalog.errors import MintError
from sglang_mint.dev.tiny import write_tiny_adapters

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

DOC = Path(__file__).resolve().parents[2] / "docs" / "bad-inputs.md"
PROMPT = "the quick brown fox"
GOOD = "ok/a"


def doc_keys() -> list[str]:
    return re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.M)


def rewrite_blob(catalog, adapter_id: str, name: str, data: bytes | None) -> None:
    """Damage one file of a revision on disk, as a crash or a hand edit would (None: delete it)."""
    with open_catalog(str(catalog)) as cat:
        path = Path(cat.resolve(adapter_id).local_path()) / name
        blob = cat.blobs.local_path(cat.resolve(adapter_id).files[name])
    for target in {path, Path(blob)}:
        target.chmod(0o644)
        if data is None:
            target.unlink()
        else:
            target.write_bytes(data)


def wrong_shape_weights(folder: Path) -> bytes:
    """The adapter's weights with k_proj.lora_B widened from [64, r] to [128, r]."""
    import torch
    from safetensors.torch import load_file, save

    tensors = load_file(str(folder / "adapter_model.safetensors"))
    key = next(k for k in tensors if "k_proj.lora_B" in k)
    tensors[key] = torch.randn(2 * tensors[key].shape[0], tensors[key].shape[1])
    return save(tensors)


@pytest.fixture(scope="module")
def adapters(tiny_model, tmp_path_factory):
    return write_tiny_adapters(tiny_model, tmp_path_factory.mktemp("bad-input-adapters"), count=8, seed=21)


@pytest.fixture(scope="module")
def catalog(tiny_model, adapters, shared_catalog, tmp_path_factory):
    from test_catalog_serving import write_rank16_adapter

    root = shared_catalog  # the ids below are this module's own
    cat = open_catalog(str(root))
    k_proj = adapters[6]  # all modules (tiny.ADAPTER_SHAPES[0]), and its own content: blobs are shared by content
    for adapter_id, folder in ((GOOD, adapters[0]), ("bad/truncated", adapters[1]), ("bad/missing", adapters[2]),
                               ("bad/config", adapters[3]), ("bad/shape", k_proj), ("gone/x", adapters[5])):
        cat.publish(adapter_id, str(folder))
    cat.publish("bad/rank16", str(write_rank16_adapter(tiny_model, tmp_path_factory.mktemp("r16") / "a")))
    cat.publish("bad/row", str(adapters[7]))
    cat.delete("gone/x")
    cat.close()
    with sqlite3.connect(root / "catalog.db") as db:  # a row whose content_digest is a folder holding an adapter
        db.execute("UPDATE revisions SET content_digest = ? WHERE adapter_id = 'bad/row'", (str(adapters[7]),))
    weights = "adapter_model.safetensors"
    data = (adapters[1] / weights).read_bytes()
    rewrite_blob(root, "bad/truncated", weights, data[: len(data) // 2])
    rewrite_blob(root, "bad/missing", weights, None)
    rewrite_blob(root, "bad/config", "adapter_config.json", b"{not json")
    rewrite_blob(root, "bad/shape", weights, wrong_shape_weights(k_proj))
    return root


@pytest.fixture(scope="module")
def server(catalog, shared_catalog_server):
    return shared_catalog_server


def post(server, path: str, body, content_type: str = "application/json", method: str | None = None
         ) -> tuple[int, str]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    try:
        conn.putrequest(method or ("POST" if data is not None else "GET"), path)
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders()
        try:
            conn.send(data or b"")
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused on its headers (413) and closed before the body was in: the answer is still there
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def completion(model) -> dict:
    return {"model": model, "prompt": PROMPT, "max_tokens": 2, "temperature": 0}


def generate(lora_path, **extra) -> dict:
    return {"text": PROMPT, "sampling_params": {"max_new_tokens": 2, "temperature": 0}, "lora_path": lora_path,
            **extra}


REQUESTS = {
    "model-empty": ("/v1/completions", completion(""), 400, "adapter id is empty"),
    "model-dotdot": ("/v1/completions", completion("../x"), 400, "'..' segment"),
    "model-long": ("/v1/completions", completion("a" * 129), 400, "at most 128 allowed"),
    "model-control": ("/v1/completions", completion("a\x01b"), 400, "control character"),
    "model-non-ascii": ("/v1/completions", completion("caf\u00e9"), 400, "non-ASCII character"),
    "model-foreign-prefix": ("/v1/completions", completion("other:ok/a"), 400, "not the served model name"),
    "model-not-a-string": ("/v1/completions", completion(5), 400, "model"),
    "model-unknown": ("/v1/completions", completion("no/such"), 404, "'no/such' is not in the catalog"),
    "model-deleted": ("/v1/completions", completion("gone/x"), 404, "not in the catalog"),
    "lora-path-unknown-revision": ("/generate", generate("ok/a@99"), 404, "has no revision 99"),
    "lora-path-bad-revision": ("/generate", generate("ok/a@x"), 400, "is not a positive integer"),
    "lora-path-revision-zero": ("/generate", generate("ok/a@0"), 400, "is not a positive integer"),
    "lora-path-unknown": ("/generate", generate("no/such"), 404, "not in the catalog"),
    "lora-path-deleted": ("/generate", generate("gone/x@1"), 404, "(deleted)"),
    "lora-path-batch": ("/generate", {**generate(["ok/a", "no/such"]), "text": [PROMPT, PROMPT]}, 404, "no/such"),
    "lora-path-longer-than-batch": ("/generate", {**generate(["ok/a"] * 20_000), "text": [PROMPT, PROMPT]}, 400,
                                    "a list of 20000 entries for a request of 2 prompt(s)"),
    "lora-path-list-one-prompt": ("/generate", generate(["ok/a"]), 400,
                                  "one adapter name (a string) for one prompt, got a list"),
    "rid-warm-up": ("/generate", {**generate("ok/a"), "rid": "mint-warm-up-x"}, 400, "are the server's own"),
    "rid-health-check": ("/generate", {**generate("ok/a"), "rid": "HEALTH_CHECK_job"}, 400, "SGLang's health checks"),
    "prefetch-not-json": ("/mint/prefetch", b"nope", 400, "expected JSON"),
    "prefetch-not-list": ("/mint/prefetch", {"adapters": "ok/a"}, 400, "expected JSON"),
    "prefetch-too-many": ("/mint/prefetch", {"adapters": [f"x{i}" for i in range(1025)]}, 400, "at most 1024"),
    "prefetch-unknown": ("/mint/prefetch", {"adapters": ["no/such"]}, 200, "no/such"),
    "usage-bad-moment": ("/mint/usage?since=yesterday", None, 400, "since: 'yesterday' is not a moment"),
    "usage-unknown-parameter": ("/mint/usage?adapters=ok/a", None, 400, "unknown query parameter 'adapters'"),
    "file-truncated": ("/v1/completions", completion("bad/truncated"), 422, "could not be loaded"),
    "file-rank-above-max": ("/v1/completions", completion("bad/rank16"), 422,
                            "rank 16 is above this server's --max-lora-rank 8"),
    "file-missing": ("/v1/completions", completion("bad/missing"), 422, "could not be loaded"),
    "file-config-garbage": ("/v1/completions", completion("bad/config"), 422, "could not be loaded"),
    "file-wrong-shape": ("/v1/completions", completion("bad/shape"), 422,
                         ("k_proj", "has shape [128, ", "expected [64, ")),  # the tensor, both shapes
    "row-digest-path": ("/v1/completions", completion("bad/row"), 422,
                        "'bad/row' revision 1: the catalog row is refused"),
}


@pytest.mark.parametrize("key", list(REQUESTS))
def test_request(server, key):
    path, body, status, says = REQUESTS[key]
    logged = len(server.log_path.read_text(errors="replace"))
    code, text = post(server, path, body)
    assert code == status, (key, code, text[:500])
    for part in says if isinstance(says, tuple) else (says,):
        assert part in text, (key, part, text[:500])
    code, text = post(server, "/v1/completions", completion(GOOD))
    assert code == 200, text[:500]  # the server keeps serving
    # ...and a refusal leaves no traceback behind, e.g. from releasing an adapter it never acquired
    assert "Traceback" not in server.log_path.read_text(errors="replace")[logged:], key


def test_sglang_s_own_health_check_is_still_served(server):
    """/health_generate sends a request whose rid starts with HEALTH_CHECK, a head a client may not use."""
    code, text = post(server, "/health_generate", None)
    assert code == 200, text[:500]


def test_extra_key_namespace(server):
    body = {"text": PROMPT * 4, "sampling_params": {"max_new_tokens": 1}, "lora_path": GOOD}
    post(server, "/generate", body)
    code, text = post(server, "/generate", body)
    assert code == 200 and json.loads(text)["meta_info"]["cached_tokens"] > 0  # control: its own repeat hits
    code, text = post(server, "/generate", {"text": PROMPT * 4, "sampling_params": {"max_new_tokens": 1},
                                            "extra_key": f"mint:{GOOD}@1"})
    assert code == 200 and json.loads(text)["meta_info"]["cached_tokens"] == 0


def test_a_lora_id_in_the_body_is_not_the_request_s_adapter(server):
    """SGLang's /generate takes ``lora_id`` from the body and, without a ``lora_path``, sends it to the
    scheduler as is: a client named any catalog revision past the catalog (and was billed as it), and
    ``"mint:x"``, no revision to parse, stopped the scheduler. The id is only the one ``lora_path``
    resolves to: such a request is the base model's."""
    def answer(**body):
        code, text = post(server, "/generate", {"text": PROMPT, "sampling_params": {
            "max_new_tokens": 8, "temperature": 0}, "return_logprob": True, **body})
        assert code == 200, text[:500]
        meta = json.loads(text)["meta_info"]
        return [(lp[1], lp[0]) for lp in meta["output_token_logprobs"]]  # (token id, logprob)

    def gap(one, other) -> float:
        """How far two answers are apart: infinite if their tokens differ, else the largest logprob gap (a
        prompt found in the prefix cache is computed in other pieces: about 1e-5 apart)."""
        if [token for token, _ in one] != [token for token, _ in other]:
            return float("inf")
        return max(abs(a - b) for (_, a), (_, b) in zip(one, other))

    base, adapter = answer(), answer(lora_path=GOOD)
    assert gap(adapter, base) > 1e-2  # the control: the adapter changes the answer, so the check below can fail
    assert gap(answer(lora_id=f"mint:{GOOD}@1"), base) < 1e-3
    assert gap(answer(lora_id="mint:x"), base) < 1e-3
    code, text = post(server, "/v1/completions", completion(GOOD))
    assert code == 200, text[:500]  # the server keeps serving


def stream_and_hang_up(server, body: dict) -> str:
    """POST a streamed /generate, read its answer up to its first event (a token, or the error), and hang up."""
    import socket

    data = json.dumps(body).encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /generate HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     + f"Content-Length: {len(data)}\r\n\r\n".encode() + data)
        first = sock.recv(65536)
        while b"data:" not in first:
            more = sock.recv(65536)
            assert more, first  # closed before its first event
            first += more
    return first.decode(errors="replace")


def test_a_short_hex_rid_cannot_cancel_another_tenant_s_request(server):
    """SGLang aborts every request whose rid STARTS WITH an aborted one's, and makes rids of 32 hex digits:
    a client that sent rid "a" and hung up cancelled every other request whose rid began with "a" (one in
    16 of everyone's). Such a rid, a proper prefix of the ones SGLang makes, is refused before it runs."""
    import threading

    other = "a" + "0" * 31  # another tenant's request, with a rid SGLang could have made
    answers = {}

    def long_request():
        answers["other"] = post(server, "/generate", {"text": PROMPT, "rid": other, "sampling_params": {
            "max_new_tokens": 96, "temperature": 0, "ignore_eos": True}})

    worker = threading.Thread(target=long_request)
    worker.start()
    first = stream_and_hang_up(server, {"text": PROMPT, "rid": "a", "stream": True,  # a stream: its error in it
                                        "sampling_params": {"max_new_tokens": 96, "ignore_eos": True}})
    worker.join(timeout=300)
    code, text = answers["other"]
    assert code == 200 and json.loads(text)["meta_info"]["finish_reason"]["type"] == "length", text[:500]
    assert "rid 'a' is a prefix of the request ids SGLang makes" in first, first[:500]


def test_a_client_s_hang_up_cancels_no_request_whose_rid_extends_its_rid(server):
    """SGLang aborts every request whose rid STARTS WITH an aborted one's. A tenant that sent rid "job",
    read one token and hung up cancelled another tenant's "job-7" midway. Its request now runs to its end
    instead; the other one is served in full."""
    other = {"text": PROMPT, "rid": "job-7", "stream": True,
             "sampling_params": {"max_new_tokens": 1536, "temperature": 0, "ignore_eos": True}}
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
    conn.request("POST", "/generate", json.dumps(other), {"Content-Type": "application/json"})
    answer = conn.getresponse()
    assert answer.status == 200 and answer.readline().startswith(b"data:")  # it runs
    stream_and_hang_up(server, {"text": PROMPT, "rid": "job", "stream": True,
                                "sampling_params": {"max_new_tokens": 1536, "ignore_eos": True}})
    # ... while "job-7" still had most of its tokens to go
    last = [line for line in answer.read().split(b"\n") if line.startswith(b"data:") and b"meta_info" in line][-1]
    conn.close()
    meta = json.loads(last[len(b"data:"):])["meta_info"]
    assert (meta["finish_reason"]["type"], meta["completion_tokens"]) == ("length", 1536), meta


def test_a_finished_stream_s_rid_taken_by_another_request_is_not_aborted_with_it(server):
    """SGLang aborts each rid of a streamed answer that is still in flight 2 s after the stream ended
    (TokenizerManager.create_abort_task), finished or not. A tenant that streamed rid "task" to its end
    ended another tenant's "task", sent once the first was done, 2 s in."""
    import time

    first = {"text": PROMPT, "rid": "task", "stream": True, "sampling_params": {"max_new_tokens": 2}}
    code, text = post(server, "/generate", first)
    streamed = time.monotonic()
    assert code == 200 and '"finish_reason":{"type":"length"' in text, text[-500:]  # streamed to its end
    code, text = post(server, "/generate", {"text": PROMPT, "rid": "task", "sampling_params": {
        "max_new_tokens": 2000, "temperature": 0, "ignore_eos": True}})
    meta = json.loads(text)["meta_info"]
    assert (code, meta["finish_reason"]["type"], meta["completion_tokens"]) == (200, "length", 2000), text[:500]
    # the control: the second request was still running when SGLang's late abort came (2 s after the stream)
    assert time.monotonic() - streamed > 2.5, "2,000 tokens took under 2.5 s: this test no longer tests"


def import_cases(tiny_model, adapters, tmp: Path) -> dict:
    """key -> (adapter folder, adapter id, substrings the refusal names)."""
    import torch
    from safetensors.torch import load_file, save_file

    def variant(name, config=None, weights=None, drop=()):
        out = tmp / name
        shutil.copytree(adapters[0], out)
        if config is not None:
            cfg = json.loads((out / "adapter_config.json").read_text())
            cfg.update(config)
            (out / "adapter_config.json").write_text(json.dumps(cfg))
        if weights is not None:
            save_file(weights(load_file(str(out / "adapter_model.safetensors"))), str(out / "adapter_model.safetensors"))
        for f in drop:
            (out / f).unlink()
        return out

    def widen(t):
        key = next(k for k in t if "lora_B" in k)
        return {**t, key: torch.randn(t[key].shape[0] + 3, t[key].shape[1])}

    def to_layer7(t):
        return {k.replace("layers.0.", "layers.7."): v for k, v in t.items()}

    def mixed(t):
        key = next(iter(t))
        return {**t, key: t[key].half()}

    def embedding_saved(t):  # PEFT's save_embedding_layers: the base layer's whole weight beside the LoRA
        key = next(iter(t))
        return {**t, "base_model.model.lm_head.base_layer.weight": torch.zeros(4, 4, dtype=t[key].dtype)}

    pickle = variant("pickle", drop=["adapter_model.safetensors"])
    (pickle / "adapter_model.bin").write_bytes(b"\x80\x04not really")
    truncated = variant("truncated")
    data = (truncated / "adapter_model.safetensors").read_bytes()
    (truncated / "adapter_model.safetensors").write_bytes(data[: len(data) - 7])
    other = tmp / "other-model"
    other.mkdir()
    cfg = json.loads((tiny_model / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "num_hidden_layers": 3}))
    # what the doc promises the refusals name: the tensor and both shapes; both base identities
    from sglang_mint.adapters.base_model import load_base_model
    first = load_file(str(adapters[0] / "adapter_model.safetensors"))
    b_key = next(k for k in first if "lora_B" in k)
    out_dim, rank = first[b_key].shape
    module = b_key.split(".lora_B")[0].split("model.")[-1]  # e.g. layers.0.self_attn.q_proj
    identities = [load_base_model(str(other)).identity, load_base_model(str(tiny_model)).identity]
    assert identities[0] != identities[1]
    return {
        "import-wrong-shape": (variant("shape", weights=widen), "i/shape",
                               ["lora_B", "do not match", module, f"has shape [{out_dim + 3}, {rank}]",
                                f"expected [{out_dim}, {rank}]"]),
        "import-pickle": (pickle, "i/pickle", ["pickle file and is refused"]),
        "import-no-config": (variant("noconfig", drop=["adapter_config.json"]), "i/noconfig",
                             ["missing adapter_config.json"]),
        "import-not-lora": (variant("prefix", config={"peft_type": "PREFIX_TUNING"}), "i/prefix", ["only LORA"]),
        "import-dora": (variant("dora", config={"use_dora": True}), "i/dora", ["DoRA"]),
        "import-rank-zero": (variant("r0", config={"r": 0}), "i/r0", ["rank r must be a positive integer"]),
        "import-truncated": (truncated, "i/truncated", ["truncated safetensors"]),
        "import-other-base": (variant("other", config={"base_model_name_or_path": str(other)}), "i/other",
                              ["trained on", *identities]),
        "import-layer-out-of-range": (variant("layer7", weights=to_layer7), "i/layer7", ["layer 7 does not exist"]),
        "import-mixed-dtypes": (variant("mixed", weights=mixed), "i/mixed", ["mix dtypes"]),
        "import-embedding-save": (variant("embedding", weights=embedding_saved), "i/embedding",
                                  ["save with save_embedding_layers=False"]),
        "import-bad-id": (adapters[0], "../x", ["'..' segment"]),
    }


def test_imports_are_refused_and_write_nothing(tiny_model, adapters, tmp_path):
    root = tmp_path / "catalog"
    cat = init_catalog(str(root), str(tiny_model))
    cat.publish("keep/me", str(adapters[1]))
    before = (cat.stats(), sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file()))
    cases = import_cases(tiny_model, adapters, tmp_path)
    for key, (folder, adapter_id, says) in cases.items():
        with pytest.raises(MintError) as exc:
            cat.publish(adapter_id, str(folder))
        for text in says:
            assert text in str(exc.value), (key, str(exc.value))
        after = (cat.stats(), sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file()))
        assert after == before, key
    cat.close()


def upload_cases(tiny_model, adapters, tmp: Path, upload_limit: int) -> dict:
    """key -> (method, path, body, content type, status, says) for the admin endpoints."""
    from test_catalog_serving import write_rank16_adapter

    from sglang_mint.client import multipart
    from sglang_mint.packed.convert import pack_bytes

    def files_of(folder: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name.startswith("adapter_")}

    def upload(adapter_id, files, fields=None, status=400, says=""):
        body, ctype = multipart(files, fields or {})
        return ("POST", f"/mint/adapters/{adapter_id}/revisions", body, ctype, status, says)

    def with_config(files, **changes):
        return {**files, "adapter_config.json": json.dumps({**json.loads(files["adapter_config.json"]), **changes}).encode()}

    def unchecked_module(files):
        """A LoRA pair under a path that names no module of the base (``layers.0.foo.o_proj``) and
        whose width no base module has: SGLang would file it as o_proj's by substring."""
        import torch
        from safetensors.torch import load, save

        weights = load(files["adapter_model.safetensors"])
        rank = next(t for k, t in weights.items() if "lora_A" in k).shape[0]
        stem = "base_model.model.model.layers.0.foo.o_proj"
        weights = {**weights, f"{stem}.lora_A.weight": torch.randn(rank, 999),
                   f"{stem}.lora_B.weight": torch.randn(999, rank)}
        return {**files, "adapter_model.safetensors": save(weights)}

    imports = import_cases(tiny_model, adapters, tmp / "imports")
    folder = {key[len("import-"):]: case[0] for key, case in imports.items()}
    good = files_of(adapters[4])
    other_base = {"name": "other", "identity": "llama-0000other", "hidden_size": 128, "num_hidden_layers": 2}
    cfg, data, _ = pack_bytes(good["adapter_config.json"], good["adapter_model.safetensors"], other_base, "x")
    rank16 = write_rank16_adapter(tiny_model, tmp / "r16" / "a")
    return {
        "upload-wrong-shape": upload("u/shape", files_of(folder["wrong-shape"]), says="do not match"),
        "upload-pickle": upload("u/pickle", files_of(folder["pickle"]), says="pickle file and is refused"),
        "upload-missing-file": upload("u/noconfig", files_of(folder["no-config"]), says="missing adapter_config.json"),
        "upload-truncated": upload("u/truncated", files_of(folder["truncated"]), says="truncated safetensors"),
        "upload-unchecked-module": upload("u/foo", with_config(unchecked_module(good), target_modules=["o_proj"]),
                                          says="layers.0.foo.o_proj"),
        "upload-pattern-key": upload("u/pattern", with_config(good, rank_pattern={"(a|aa)*b": 8}), says="(a|aa)*b"),
        "upload-alpha-nan": upload("u/nan", with_config(good, lora_alpha=float("nan")), says="lora_alpha"),
        "upload-packed-other-base": upload("u/packed", {"adapter.mintpack": bytes(data)},
                                           says="packed for base model 'llama-0000other'"),
        "upload-rank-above-max": upload("u/r16", files_of(rank16), status=422,
                                        says="rank 16 is above this server's --max-lora-rank 8"),
        "upload-oversize": upload("u/big", {**good, "adapter_model.safetensors": b"\0" * (upload_limit + 1)},
                                  status=413, says="--mint-max-upload-bytes"),
        "upload-stale-revision": upload(GOOD, good, {"expected_revision": "1"}, status=409, says="already exists"),
        "upload-not-multipart": ("POST", "/mint/adapters/u/json/revisions", b"{}", "application/json", 415,
                                 "multipart/form-data"),
        "upload-bad-id": upload("u/a%01b", good, says="control character"),
        "upload-unknown-field": upload("u/field", good, {"colour": "red"}, says="unknown field 'colour'"),
        "upload-metadata-not-object": upload("u/meta", good, {"metadata": "[1]"}, says="must be a JSON object"),
        "upload-unknown-file": upload("u/extra", {**good, "notes.txt": b"hi"}, says="unexpected file(s) 'notes.txt'"),
        "upload-inbox-path": upload("u/inbox", {}, {"inbox": "../../../etc"}, says="32 hex digits"),
        "upload-inbox-missing": upload("u/inbox", {}, {"inbox": "0" * 32}, says="the inbox has no folder"),
        "upload-durable-not-a-flag": upload("u/durable", good, {"durable": "maybe"}, says="durable"),
        "rollback-past-first": ("POST", f"/mint/adapters/{GOOD}/rollback", b"", "application/json", 409,
                                "cannot roll back"),
        "rollback-unknown-revision": ("POST", f"/mint/adapters/{GOOD}/rollback", b'{"to": 99}', "application/json",
                                      404, "has no revision 99"),
        "show-unknown": ("GET", "/mint/adapters/no/such", None, "application/json", 404, "not in the catalog"),
    }


def catalog_state(root: Path):
    with open_catalog(str(root)) as cat:
        return cat.stats(), sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file())


def test_uploads_are_refused_and_write_nothing(server, catalog, tiny_model, adapters, tmp_path):
    before = catalog_state(catalog)
    cases = upload_cases(tiny_model, adapters, tmp_path, server.max_upload_bytes)
    for key, (method, path, body, ctype, status, says) in cases.items():
        code, text = post(server, path, body, ctype, method)
        assert code == status, (key, code, text[:500])
        assert says in text, (key, text[:500])
        assert "error" in json.loads(text), key  # OpenAI's error shape
        assert catalog_state(catalog) == before, key
    code, text = post(server, "/v1/completions", completion(GOOD))
    assert code == 200, text[:500]  # the server keeps serving


def test_doc_lists_exactly_the_cases_walked(tiny_model, adapters, tmp_path):
    import test_plugin
    import test_upload_bounds

    flag_cases = {f"S:{case}" for case, _ in next(
        m.args[1] for m in test_plugin.test_bad_flags_are_clear_errors.pytestmark if m.name == "parametrize")}
    walked = (set(REQUESTS) | {"extra-key-namespace"} | set(import_cases(tiny_model, adapters, tmp_path / "i"))
              | set(upload_cases(tiny_model, adapters, tmp_path / "u", 1)) | flag_cases
              | set(test_upload_bounds.DOC_CASES))
    keys = doc_keys()
    assert len(keys) == len(set(keys)) and set(keys) == walked
    assert len(keys) >= 30
