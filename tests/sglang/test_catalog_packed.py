"""A catalog serving one adapter as a PEFT revision and as a packed revision: identical outputs.

Real SGLang on CPU with --enable-mint --mint-catalog, the official openai
client. ``peft/<name>`` and ``packed/<name>`` are the same adapter stored both
ways (``Catalog.publish(..., pack=True)``); the packed one is read through
packed_loader and put into the LoRA pool by packed_pool's one-copy fill.
"""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from safetensors.torch import load_file, save_file

from sglang_mint.catalog import open_catalog

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

PROMPT = "the quick brown fox and the lazy dog"


@pytest.fixture(scope="module")
def catalog(tiny_adapters, shared_catalog):
    with open_catalog(str(shared_catalog)) as cat:
        for name, folder in tiny_adapters.items():
            assert cat.publish(f"peft/{name}", str(folder)).format == "peft"
            assert cat.publish(f"packed/{name}", str(folder), pack=True).format == "packed"
    return shared_catalog


@pytest.fixture(scope="module")
def server(catalog, shared_catalog_server):
    return shared_catalog_server


# Stacks the adapter has only part of (adapters/stack_fill.py): SGLang stacks q/k/v from q_proj and
# gate/up from gate_proj, so the missing members are stored as zeros. Packed, these were stored
# unstacked and every request to them was a 422; plain, they were served.
PARTIAL_STACKS = {"k-only": ("k_proj",), "kv": ("k_proj", "v_proj"), "up-only": ("up_proj",)}


def write_partial(source, dst, modules: tuple[str, ...]):
    """``source`` (a PEFT folder targeting every module) cut down to ``modules``."""
    shutil.copytree(source, dst)
    weights = dst / "adapter_model.safetensors"
    kept = {k: v for k, v in load_file(str(weights)).items() if any(f".{m}." in k for m in modules)}
    assert kept, modules
    save_file(kept, str(weights))
    config = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**config, "target_modules": list(modules)}))
    return dst


@pytest.fixture(scope="module")
def partial_stacks(catalog, tiny_adapters, tmp_path_factory):
    full = next(folder for folder in tiny_adapters.values()
                if len(json.loads((folder / "adapter_config.json").read_text())["target_modules"]) == 7)
    root = tmp_path_factory.mktemp("partial-stacks")
    with open_catalog(str(catalog)) as cat:
        for name, modules in PARTIAL_STACKS.items():
            folder = write_partial(full, root / name, modules)
            cat.publish(f"peft/{name}", str(folder))
            assert cat.publish(f"packed/{name}", str(folder), pack=True).format == "packed"
    return list(PARTIAL_STACKS)


def complete(client, model):
    r = client.completions.create(model=model, prompt=PROMPT, max_tokens=6, temperature=0, logprobs=1,
                                  extra_body={"return_token_ids": True, "ignore_eos": True})
    return r.choices[0].model_extra["token_ids"], r.choices[0].logprobs.token_logprobs


def test_packed_revision_serves_identically_to_peft(server, tiny_adapters):
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    outputs = []
    for name in tiny_adapters:
        peft, packed = complete(client, f"peft/{name}"), complete(client, f"packed/{name}")
        assert packed == peft, name  # same tokens, bit-identical logprobs
        outputs.append(tuple(peft[0]))
    assert len(set(outputs)) > 1  # the adapters differ, so the comparison can fail
    log = server.log_path.read_text(errors="replace")
    for name in tiny_adapters:  # the packed revisions went into the pool by the one-copy fill
        assert f"packed adapter mint:packed/{name}@1 into pool slot" in log, server.log_tail()
        assert f"packed adapter mint:peft/{name}@1" not in log


def test_a_partial_stack_serves_identically_packed(server, partial_stacks):
    client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
    base = complete(client, server.served_name)
    for name in partial_stacks:
        peft, packed = complete(client, f"peft/{name}"), complete(client, f"packed/{name}")
        assert packed == peft, name  # same tokens, bit-identical logprobs
        assert peft[1] != base[1], name  # the adapter moves the output: the comparison can fail
