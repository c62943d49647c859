"""Source adapters in every expert layout, written with safetensors (no model needed)."""

from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

P = "base_model.model.model.layers.{}."
E, R, H, I = 4, 4, 32, 24  # experts, rank, hidden, expert intermediate


def _cfg(folder, targets, r=R, **extra):
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": targets, **extra}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


def _dense(g, t, layer):
    t[P.format(layer) + "self_attn.q_proj.lora_A.weight"] = torch.randn(R, H, generator=g)
    t[P.format(layer) + "self_attn.q_proj.lora_B.weight"] = torch.randn(H, R, generator=g)
    t[P.format(layer) + "self_attn.v_proj.lora_A.weight"] = torch.randn(R, H, generator=g)
    t[P.format(layer) + "self_attn.v_proj.lora_B.weight"] = torch.randn(16, R, generator=g)


def write_layout(folder, layout: str, seed: int = 0, dtype=torch.float32):
    """layout: per_expert | w123 | packed3d | shared_outer | mla."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    t: dict[str, torch.Tensor] = {}
    names = {"w123": ("w1", "w3", "w2")}.get(layout, ("gate_proj", "up_proj", "down_proj"))
    for layer in range(2):
        _dense(g, t, layer)
        pre = P.format(layer) + "mlp.experts."
        for proj, (din, dout) in zip(names, [(H, I), (H, I), (I, H)]):
            if layout in ("per_expert", "w123"):
                for e in range(E):
                    t[f"{pre}{e}.{proj}.lora_A.weight"] = torch.randn(R, din, generator=g)
                    t[f"{pre}{e}.{proj}.lora_B.weight"] = torch.randn(dout, R, generator=g)
            elif layout in ("packed3d", "shared_outer"):
                ea = 1 if layout == "shared_outer" and proj != "down_proj" else E
                eb = 1 if layout == "shared_outer" and proj == "down_proj" else E
                t[f"{pre}{proj}.lora_A.weight"] = torch.randn(ea, R, din, generator=g)
                t[f"{pre}{proj}.lora_B.weight"] = torch.randn(eb, dout, R, generator=g)
        if layout == "mla":
            for mod, din, dout in [("q_a_proj", H, 16), ("kv_a_proj_with_mqa", H, 40), ("q_b_proj", 16, 48),
                                   ("kv_b_proj", 32, 64), ("o_proj", 32, H),
                                   ("indexer.wq_b", 16, 64), ("indexer.wk", H, 16), ("indexer.weights_proj", H, 4)]:
                t[P.format(layer) + f"self_attn.{mod}.lora_A.weight"] = torch.randn(R, din, generator=g)
                t[P.format(layer) + f"self_attn.{mod}.lora_B.weight"] = torch.randn(dout, R, generator=g)
    t = {k: v.to(dtype) for k, v in t.items()}
    save_file(t, str(folder / "adapter_model.safetensors"))
    _cfg(folder, sorted({k.split(".lora_")[0].rsplit(".", 1)[1] for k in t}))
    return folder


