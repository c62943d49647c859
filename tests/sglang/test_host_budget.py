"""The host budget charges what an adapter really holds, end to end on real SGLang (CPU).

A ``rank_pattern`` adapter is padded to its largest rank before SGLang serves it
(adapters/uniform_rank.py), so it holds up to 8x its file. Cold reads of six such
adapters, with room for three: the scheduler's peak stays within the budget plus
one adapter, and what it reports agrees with its memory (PSS) within 20%.
The bound is computed here from the adapters' own shapes, not by the code under test.

The same with per-expert MoE adapters (12,290 tensors in the file, padded 8x), loaded by
``/mint/prefetch``. Their one-token requests run the expert LoRA through
``--lora-backend mint`` (its MoE kernel groups the routed (slot, expert) pairs,
about 1 s a forward interpreted); SGLang's own MoE-LoRA kernel took 25-30 s a
forward here under ``TRITON_INTERPRET=1`` with 256 experts. Held one tensor per
expert, two such adapters grew the scheduler's PSS by 123.9 MB against 79.2 MB
charged (+56%); held stacked (adapters/stacked_experts.py), three grew it by
123.8 MB against 108.7 MB charged (+14%).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from safetensors.torch import load_file

from mint_status import mint_status
from sglang_mint.catalog import init_catalog
from sglang_mint.dev.server import SGLangServer

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


def test_padded_adapters_are_charged_what_they_hold(tiny_model, catalog, tmp_path_factory, catalog_server):
    root, one_adapter = catalog
    budget = 3 * one_adapter + (1 << 20)
    with catalog_server(tiny_model, root, tmp_path_factory.mktemp("budget-server"),
                        "--mint-host-cache-bytes", str(budget), "--max-lora-rank", str(PADDED_RANK),
                        "--max-loras-per-batch", "2") as server:
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=600)
        client.completions.create(model="padded/warm-up", prompt="warm up", max_tokens=2)
        [before] = mint_status(server)["schedulers"]

        def one(i):
            return client.completions.create(model=f"padded/p{i}", prompt="the quick brown fox", max_tokens=4,
                                             temperature=0).choices[0].text

        with ThreadPoolExecutor(N_ADAPTERS) as pool:
            outputs = list(pool.map(one, range(N_ADAPTERS)))
        assert len(set(outputs)) > 1, outputs  # the adapters were applied, and differ
        [after] = mint_status(server)["schedulers"]
    assert after["cold_loads"] == N_ADAPTERS + 1 and after["evictions"] >= N_ADAPTERS - 3, after
    # Each adapter holds about 8x its file: a budget charged file bytes lets all six in at once.
    assert after["host_peak_bytes"] <= budget + one_adapter, (after, one_adapter)
    assert after["host_bytes"] >= 2 * one_adapter, after  # it did fill up: at least two resident
    grown = after["pss_data_bytes"] - before["pss_data_bytes"]
    assert grown == pytest.approx(after["host_bytes"] - before["host_bytes"], rel=0.2), (grown, before, after)


# -- per-expert MoE adapters ---------------------------------------------------
# A Qwen3-MoE with 256 experts in 8 layers: a per-expert adapter has 256 * 8 * 6 = 12,288 expert
# tensors. Its experts have rank 2 and one attention module rank 16, so every expert tensor is
# padded 8x: about 5 MiB on disk, about 36 MiB held. Prefetch (one-token requests) loads them;
# the expert LoRA and the base experts then run Triton kernels, interpreted on CPU (TRITON_INTERPRET=1).
MOE = dict(num_experts=256, num_hidden_layers=8)
MOE_RANK, MOE_WIDE_RANK = 2, 16
MOE_WIDE = "model.layers.0.self_attn.o_proj"  # alone: SGLang stacks q_proj with k and v
EXPERT_SHAPES = {"gate_proj": ("hidden_size", "moe_intermediate_size"),
                 "up_proj": ("hidden_size", "moe_intermediate_size"),
                 "down_proj": ("moe_intermediate_size", "hidden_size")}  # (in, out)


def write_per_expert_adapter(model_dir, out, seed: int, rank: int = MOE_RANK, wide_rank: int = MOE_WIDE_RANK):
    """``...mlp.experts.<e>.{gate,up,down}_proj.lora_{A,B}.weight`` for every expert and layer, and
    ``MOE_WIDE`` at ``wide_rank`` (``rank_pattern``): random A and B, fp32."""
    import torch
    from safetensors.torch import save_file

    cfg = json.loads((model_dir / "config.json").read_text())
    gen = torch.Generator().manual_seed(seed)
    tensors = {}

    def module(key, r, n_in, n_out):
        tensors[f"base_model.model.{key}.lora_A.weight"] = torch.randn(r, n_in, generator=gen) * 0.1
        tensors[f"base_model.model.{key}.lora_B.weight"] = torch.randn(n_out, r, generator=gen) * 0.1

    module(MOE_WIDE, wide_rank, cfg["num_attention_heads"] * cfg["head_dim"], cfg["hidden_size"])
    for layer in range(cfg["num_hidden_layers"]):
        for e in range(cfg.get("num_experts") or cfg["num_local_experts"]):  # transformers 5 writes the latter
            for proj, (n_in, n_out) in EXPERT_SHAPES.items():
                module(f"model.layers.{layer}.mlp.experts.{e}.{proj}", rank, cfg[n_in], cfg[n_out])
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps(dict(
        peft_type="LORA", task_type="CAUSAL_LM", base_model_name_or_path=str(model_dir), r=rank,
        lora_alpha=2 * rank, target_modules=["o_proj", *EXPERT_SHAPES], rank_pattern={MOE_WIDE: wide_rank},
        lora_dropout=0.0, bias="none")))
    return out


def uniform_bytes(folder) -> tuple[int, int]:
    """(tensor bytes once every module has the largest rank, tensors in the file), from the file's
    own shapes: A is [r, in], B [out, r]. SGLang's stacking of gate and up keeps the bytes."""
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    rank = {k: t.shape[0] if ".lora_A." in k else t.shape[-1] for k, t in tensors.items()}
    top = max(rank.values())
    return sum(t.numel() * t.element_size() * top // rank[k] for k, t in tensors.items()), len(tensors)


@pytest.fixture(scope="module")
def moe_catalog(tmp_path_factory):
    from sglang_mint.dev.tiny_moe import write_tiny_moe

    root = tmp_path_factory.mktemp("moe-budget")
    model = write_tiny_moe(root / "model", "qwen3-moe", seed=0, **MOE)
    cat = init_catalog(str(root / "catalog"), str(model))
    sizes = []
    for i in range(N_ADAPTERS):
        folder = write_per_expert_adapter(model, root / f"e{i}", seed=200 + i)
        sizes.append(uniform_bytes(folder))
        cat.publish(f"experts/e{i}", str(folder))
    cat.publish("experts/warm-up", str(write_per_expert_adapter(model, root / "warm", seed=199, rank=1, wide_rank=2)))
    cat.close()
    return model, root / "catalog", max(sizes)[0]


def prefetch(server, adapters: list[str]) -> dict:
    req = urllib.request.Request(server.url + "/mint/prefetch", data=json.dumps({"adapters": adapters}).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def loaded(server, cold_loads: int, timeout: float = 300.0) -> dict:
    """The scheduler's status once ``cold_loads`` reads are installed and nothing is held or reading."""
    deadline = time.monotonic() + timeout
    while True:
        [s] = mint_status(server)["schedulers"]
        if s["cold_loads"] + s["failed_loads"] >= cold_loads and not (s["loading"] or s["adapters_in_use"]):
            return s
        assert time.monotonic() < deadline, s
        time.sleep(0.2)


@pytest.fixture(scope="module")
def moe_loads(moe_catalog, tmp_path_factory):
    """Six per-expert adapters prefetched through a budget of three: (one adapter's bytes, budget,
    status before, status after, a completion on the last one)."""
    model, root, one_adapter = moe_catalog
    budget = 3 * one_adapter + (1 << 20)
    args = ["--mint-catalog", str(root), "--mint-host-cache-bytes", str(budget),
            "--max-lora-rank", str(MOE_WIDE_RANK), "--max-loras-per-batch", "2"]
    with SGLangServer(model, enable_mint=True, lora_backend="mint", extra_args=args, python=sys.executable,
                      log_path=tmp_path_factory.mktemp("moe-budget-server") / "server.log",
                      env={"TRITON_INTERPRET": "1"}) as server:
        assert prefetch(server, ["experts/warm-up"])["errors"] == {}
        before = loaded(server, 1)
        assert before["failed_loads"] == 0, before
        assert prefetch(server, [f"experts/e{i}" for i in range(N_ADAPTERS)])["errors"] == {}
        after = loaded(server, N_ADAPTERS + 1)
        client = openai.OpenAI(base_url=server.openai_url, api_key="none", max_retries=0, timeout=120)
        served = client.completions.create(model=f"experts/e{N_ADAPTERS - 1}", prompt="the quick brown fox",
                                           max_tokens=2, temperature=0, extra_body={"ignore_eos": True})
    return one_adapter, budget, before, after, served


def test_per_expert_moe_adapters_are_charged_what_they_hold(moe_loads):
    one_adapter, budget, _, after, served = moe_loads
    assert after["failed_loads"] == 0 and after["cold_loads"] == N_ADAPTERS + 1, after
    assert served.usage.completion_tokens == 2  # a loaded adapter serves: expert LoRA ran
    assert after["evictions"] >= N_ADAPTERS - 3, after
    # A budget charged file bytes (an eighth of what each holds) lets all six in at once.
    assert after["host_peak_bytes"] <= budget + one_adapter, (after, one_adapter)
    assert after["host_bytes"] >= 2 * one_adapter, after  # it did fill up: at least two resident


def test_per_expert_moe_host_bytes_agree_with_pss(moe_loads):
    _, _, before, after, _ = moe_loads
    grown = after["pss_data_bytes"] - before["pss_data_bytes"]
    assert grown == pytest.approx(after["host_bytes"] - before["host_bytes"], rel=0.2), (grown, before, after)
