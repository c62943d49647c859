"""The host budget charges what an adapter really holds, end to end on real SGLang (CPU).

A ``rank_pattern`` adapter is padded to its largest rank before SGLang serves it
(adapters/uniform_rank.py), so it holds up to 8x its file. Cold reads of six such
adapters, with room for three: the scheduler's peak stays within the budget plus
one adapter, and what it reports agrees with its memory (PSS) within 20%.
The bound is computed here from the adapters' own shapes, not by the code under test.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from safetensors.torch import load_file

from sglang_mint.catalog import init_catalog

pytestmark = pytest.mark.server  # starts real SGLang servers: not in make test-fast

N_ADAPTERS = 6
RANK, PADDED_RANK = 256, 2048  # every module but one is padded 8x: about 33 MiB each
WIDE = "layers.0.self_attn.q_proj"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def write_padded_adapter(model_dir, out, seed: int, rank: int = RANK, wide_rank: int = PADDED_RANK):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from sglang_mint.dev.tiny import randomize_lora

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, rank_pattern={WIDE: wide_rank})
    peft = get_peft_model(model, config)
    randomize_lora(peft, seed=seed, b_std=0.01)
    peft.save_pretrained(out)
    return out


def padded_bytes(folder) -> int:
    """Tensor bytes once every module is at PADDED_RANK: the wide module as written, the rest 8x."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    size = {k: t.numel() * t.element_size() for k, t in tensors.items()}
    wide = sum(n for k, n in size.items() if WIDE in k)
    return wide + (PADDED_RANK // RANK) * (sum(size.values()) - wide)


@pytest.fixture(scope="module")
def catalog(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("budget-catalog") / "catalog"
    cat = init_catalog(str(root), str(tiny_model))
    folders = tmp_path_factory.mktemp("budget-adapters")
    sizes = []
    for i in range(N_ADAPTERS):
        folder = write_padded_adapter(tiny_model, folders / f"p{i}", seed=100 + i)
        sizes.append(padded_bytes(folder))
        cat.publish(f"padded/p{i}", str(folder))
    # a small one that takes the same path: threads, padding and allocator warmed before measuring
    cat.publish("padded/warm-up", str(write_padded_adapter(tiny_model, folders / "warm", seed=99, rank=1,
                                                             wide_rank=2)))
    cat.close()
    return root, max(sizes)


def status(server) -> dict:
    with urllib.request.urlopen(server.url + "/mint/status") as r:
        return json.loads(r.read())


def test_padded_adapters_are_charged_what_they_hold(tiny_model, catalog, tmp_path_factory, catalog_server):
    root, one_adapter = catalog
    budget = 3 * one_adapter + (1 << 20)
    with catalog_server(tiny_model, root, tmp_path_factory.mktemp("budget-server"),
                        "--mint-host-cache-bytes", str(budget), "--max-lora-rank", str(PADDED_RANK),
                        "--max-loras-per-batch", "2") as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        client.completions.create(model="padded/warm-up", prompt="warm up", max_tokens=2)
        [before] = status(server)["schedulers"]

        def one(i):
            return client.completions.create(model=f"padded/p{i}", prompt="the quick brown fox", max_tokens=4,
                                             temperature=0).choices[0].text

        with ThreadPoolExecutor(N_ADAPTERS) as pool:
            outputs = list(pool.map(one, range(N_ADAPTERS)))
        assert len(set(outputs)) > 1, outputs  # the adapters were applied, and differ
        [after] = status(server)["schedulers"]
    assert after["cold_loads"] == N_ADAPTERS + 1 and after["evictions"] >= N_ADAPTERS - 3, after
    # Each adapter holds about 8x its file: a budget charged file bytes lets all six in at once.
    assert after["host_peak_bytes"] <= budget + one_adapter, (after, one_adapter)
    assert after["host_bytes"] >= 2 * one_adapter, after  # it did fill up: at least two resident
    grown = after["pss_bytes"] - before["pss_bytes"]
    assert grown == pytest.approx(after["host_bytes"] - before["host_bytes"], rel=0.2), (grown, before, after)
