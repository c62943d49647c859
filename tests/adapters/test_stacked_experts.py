"""Per-expert LoRA tensors are held as one 3D tensor per layer-module (adapters/stacked_experts.py)."""

from __future__ import annotations

import torch

from sglang_mint.adapters.stacked_experts import held_tensor_count, stack_experts

E = 4


def per_expert(layers=2, rank=2, hidden=8, width=6):
    gen = torch.Generator().manual_seed(0)
    out = {"model.layers.0.self_attn.o_proj.lora_A.weight": torch.randn(rank, hidden, generator=gen)}
    for layer in range(layers):
        for e in range(E):
            for proj, (n_in, n_out) in {"gate_proj": (hidden, width), "down_proj": (width, hidden)}.items():
                key = f"model.layers.{layer}.mlp.experts.{e}.{proj}"
                out[f"{key}.lora_A.weight"] = torch.randn(rank, n_in, generator=gen)
                out[f"{key}.lora_B.weight"] = torch.randn(n_out, rank, generator=gen)
    return out


def header(tensors):
    return {k: (str(t.dtype), list(t.shape)) for k, t in tensors.items()}


def test_each_layer_module_becomes_one_tensor_with_expert_e_at_row_e():
    tensors = per_expert()
    stacked = stack_experts(tensors, E)
    assert len(tensors) == 1 + 2 * E * 4 and len(stacked) == 1 + 2 * 4
    a = stacked["model.layers.1.mlp.experts.down_proj.lora_A.weight"]
    b = stacked["model.layers.1.mlp.experts.gate_proj.lora_B.weight"]
    assert a.shape == (E, 2, 6) and b.shape == (E, 6, 2)
    for e in range(E):
        assert torch.equal(a[e], tensors[f"model.layers.1.mlp.experts.{e}.down_proj.lora_A.weight"])
        assert torch.equal(b[e], tensors[f"model.layers.1.mlp.experts.{e}.gate_proj.lora_B.weight"])
    # one storage per layer-module, not one per expert
    assert a.untyped_storage().nbytes() == a.numel() * a.element_size()
    # the dense module passes through untouched, first as it was
    first = next(iter(stacked))
    assert first == "model.layers.0.self_attn.o_proj.lora_A.weight" and stacked[first] is tensors[first]
    assert held_tensor_count(header(tensors), E) == len(stacked)


def test_incomplete_or_mixed_groups_stay_per_expert():
    tensors = per_expert(layers=1)
    del tensors["model.layers.0.mlp.experts.2.gate_proj.lora_A.weight"]  # expert 2 missing from gate A
    tensors["model.layers.0.mlp.experts.3.down_proj.lora_B.weight"] = torch.zeros(8, 3)  # another rank
    stacked = stack_experts(tensors, E)
    assert "model.layers.0.mlp.experts.gate_proj.lora_A.weight" not in stacked
    assert "model.layers.0.mlp.experts.1.gate_proj.lora_A.weight" in stacked
    assert "model.layers.0.mlp.experts.3.down_proj.lora_B.weight" in stacked
    assert stacked["model.layers.0.mlp.experts.gate_proj.lora_B.weight"].shape == (E, 6, 2)  # its pair stacks
    assert held_tensor_count(header(tensors), E) == len(stacked)


def test_a_model_without_experts_or_an_adapter_without_them_comes_back_as_is():
    tensors = per_expert(layers=1)
    assert stack_experts(tensors, None) is tensors
    assert stack_experts(tensors, E + 1) is tensors  # groups of 4 in a model of 5 experts: not complete
    dense = {"model.layers.0.self_attn.o_proj.lora_A.weight": torch.zeros(2, 8)}
    assert stack_experts(dense, E) is dense and held_tensor_count(header(dense), E) == 1
