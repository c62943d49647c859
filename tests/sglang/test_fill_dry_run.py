"""An adapter SGLang's pool fill raises on fails its own requests, not the server: real SGLang, tiny Qwen3-MoE.

A server started with a shared-outer MoE adapter in ``--lora-paths`` (one gate/up lora_A and one down
lora_B for every expert: a lead of 1) sets SGLang's pool to hold one of each per slot
(``experts_shared_outer_loras``, lora_manager._detect_shared_outer_loras). A catalog's per-expert adapter
then fails the pool fill's check ("experts_shared_outer_loras is enabled but gate_up_proj_moe lora_A dict
has 8 entries"), which runs on the scheduler's loop as a batch is formed: the server stopped for every
tenant. adapter_reader.fill_refusal runs SGLang's fill dry on the read thread first; the request gets a
422 naming why, and the server goes on serving the base model and the shared-outer adapter.
"""

from __future__ import annotations

import json
import shutil

import openai
import pytest
from safetensors.torch import load_file, save_file

from test_parallel import complete, openai_client

from sglang_mint.catalog import init_catalog
from sglang_mint.dev.server import SGLangServer
from sglang_mint.dev.tiny_moe import write_tiny_moe, write_tiny_moe_adapters

pytestmark = pytest.mark.server  # starts a real SGLang server: not in make test-fast

SHARED_OUTER = ("mlp.experts.gate_proj.lora_A.weight", "mlp.experts.up_proj.lora_A.weight",
                "mlp.experts.down_proj.lora_B.weight")


def write_shared_outer(packed3d, dst):
    """The 3D adapter with one gate/up A and one down B for all experts (expert 0's), as a shared-outer
    trainer writes it: [1, ...] where the per-expert form has [E, ...]."""
    shutil.copytree(packed3d, dst)
    tensors = load_file(str(dst / "adapter_model.safetensors"))
    outer = {k: v[:1].clone() if k.endswith(SHARED_OUTER) else v for k, v in tensors.items()}
    assert sum(k.endswith(SHARED_OUTER) for k in outer) >= 3, sorted(tensors)
    save_file(outer, str(dst / "adapter_model.safetensors"))
    return dst


def test_a_per_expert_adapter_on_a_shared_outer_pool_is_refused_and_the_server_serves_on(tmp_path):
    model = write_tiny_moe(tmp_path / "model", "qwen3-moe", seed=0)
    forms = write_tiny_moe_adapters(model, tmp_path / "a", seed=0)
    outer = write_shared_outer(forms["packed3d"], tmp_path / "outer")
    assert json.loads((outer / "adapter_config.json").read_text())["r"] > 0
    catalog = tmp_path / "catalog"
    with init_catalog(str(catalog), str(model)) as cat:
        cat.publish("acme/experts", str(forms["per-expert"]))
    extra = ["--mint-catalog", str(catalog), "--max-loras-per-batch", "2"]
    with SGLangServer(model, enable_mint=True, lora_paths={"outer": outer}, extra_args=extra,
                      log_path=tmp_path / "server.log", env={"TRITON_INTERPRET": "1"}, start_timeout=400) as srv:
        client = openai_client(srv)
        before = complete(client, "outer")
        with pytest.raises(openai.APIStatusError) as refused:
            complete(client, "acme/experts")
        assert refused.value.status_code == 422, refused.value
        said = str(refused.value)
        assert "SGLang's LoRA pool fill refuses it: ValueError: experts_shared_outer_loras is enabled" in said, said
        tokens, logprobs = complete(client, "outer")  # the server serves on, the same answers (test_moe_cpu's
        assert tokens == before[0] and logprobs == pytest.approx(before[1], abs=1e-3)  # fp16 expert outputs)
        assert complete(client, srv.served_name)[0]  # and the base model
        assert srv.proc.poll() is None, srv.log_tail()
