"""Packed adapters in real SGLang (CPU): same outputs as the PEFT folder, clear errors, server keeps serving."""

from __future__ import annotations

import json
import shutil

import pytest
import requests
import torch
from safetensors.torch import save_file

from sglang_mint.packed import PACKED_FILE
from sglang_mint.packed.convert import pack_folder

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"


@pytest.fixture(scope="module")
def packed(packed_tiny_adapters):
    return packed_tiny_adapters


@pytest.fixture(scope="module")
def server(stock_server):
    """The session's stock server: the tiny adapters as PEFT folders and as ``packed-<name>``."""
    return stock_server


# The packed file holds PEFT's tensors bit for bit (tests/packed); served, an adapter may sit in
# another pool slot than its PEFT twin, and SGLang can sum in another order there.
LOGPROB_TOL = 1e-5


def assert_same_answer(got, want):
    assert got[0] == want[0] and got[1] == pytest.approx(want[1], abs=LOGPROB_TOL)


def complete(server, model):
    r = requests.post(server.url + "/v1/completions", json={
        "model": f"tiny:{model}", "prompt": PROMPT, "max_tokens": 6, "temperature": 0, "logprobs": 1}, timeout=120)
    r.raise_for_status()
    c = r.json()["choices"][0]
    return c["text"], c["logprobs"]["token_logprobs"]


def test_packed_and_peft_give_the_same_answers(server, tiny_adapters):
    outputs = set()
    for name in tiny_adapters:
        peft, pk = complete(server, name), complete(server, f"packed-{name}")
        assert_same_answer(pk, peft)
        outputs.add(peft[0])
    assert len(outputs) > 1  # the adapters differ, so the comparison can fail


def _bad_folders(tiny_model, tiny_adapters, packed, root):
    first = next(iter(packed.values()))
    good = (first / PACKED_FILE).read_bytes()
    out = {}

    def variant(name, data=None, config=None):
        d = root / name
        shutil.copytree(first, d)
        if data is not None:
            (d / PACKED_FILE).write_bytes(data)
        if config is not None:
            cfg = json.loads((d / "adapter_config.json").read_text())
            cfg.update(config)
            (d / "adapter_config.json").write_text(json.dumps(cfg))
        out[name] = d

    variant("corrupt-header", data=good[:8] + b"[[[" + good[11:])
    variant("truncated", data=good[:-512])
    variant("both-forms")  # a retrained PEFT file beside a stale pack: which one is the adapter?
    shutil.copy(next(iter(tiny_adapters.values())) / "adapter_model.safetensors", out["both-forms"])
    variant("wrong-dtype", data=good.replace(b'"dtype":"F32"', b'"dtype":"F16"', 1).replace(
        b'"dtype":"BF16"', b'"dtype":"F16"', 1))
    # packed against a base model with another hidden size
    fake = root / "fake-base"
    fake.mkdir()
    cfg = json.loads((tiny_model / "config.json").read_text())
    (fake / "config.json").write_text(json.dumps({**cfg, "hidden_size": 256}))
    pack_folder(str(next(iter(tiny_adapters.values()))), str(root / "wrong-base"), base_dir=str(fake))
    out["wrong-base"] = root / "wrong-base"
    # rank 16 > --max-lora-rank 8
    r16 = root / "r16-peft"
    r16.mkdir()
    pre = "base_model.model.model.layers.{}.self_attn."
    save_file({k.format(i): torch.randn(*s) for i in range(2) for k, s in
               [(pre + "q_proj.lora_A.weight", (16, 128)), (pre + "q_proj.lora_B.weight", (128, 16)),
                (pre + "v_proj.lora_A.weight", (16, 128)), (pre + "v_proj.lora_B.weight", (64, 16))]},
              str(r16 / "adapter_model.safetensors"))
    (r16 / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 16, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]}))
    pack_folder(str(r16), str(root / "rank16"), base_dir=str(tiny_model))
    out["rank16"] = root / "rank16"
    return out


EXPECTED = {
    "corrupt-header": "corrupt header",
    "both-forms": "holds both adapter.mintpack and adapter_model.safetensors",
    "truncated": "truncated data region",
    "wrong-dtype": "has dtype F16",
    "wrong-base": "different base model: hidden_size=256",
    "rank16": "rank 16",
}


def test_bad_packed_files_fail_cleanly_and_server_keeps_serving(server, tiny_model, tiny_adapters, packed,
                                                                 tmp_path):
    name0 = next(iter(tiny_adapters))
    before = complete(server, f"packed-{name0}")
    for name, folder in _bad_folders(tiny_model, tiny_adapters, packed, tmp_path).items():
        r = requests.post(server.url + "/load_lora_adapter",
                          json={"lora_name": f"bad-{name}", "lora_path": str(folder)}, timeout=120)
        body = r.text
        assert r.status_code != 200 or not r.json().get("success", True), (name, body)
        assert EXPECTED[name] in body, (name, body)
        assert_same_answer(complete(server, f"packed-{name0}"), before)
    # a good packed folder loads dynamically too
    r = requests.post(server.url + "/load_lora_adapter",
                      json={"lora_name": "late", "lora_path": str(packed[name0])}, timeout=120)
    assert r.status_code == 200, r.text
    assert_same_answer(complete(server, "late"), before)
