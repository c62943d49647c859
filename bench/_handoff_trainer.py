"""The trainer side of bench/handoff_bench.py: new LoRA weights every step, as an RL trainer holds them.

``Trainer`` draws step k's PEFT state dict (A fixed per rank, B new each step),
merges it into a copy of the base weights for the full-update case and writes it
as a PEFT folder for the HF+PEFT reference. ``serialize`` turns tensors into the
payload SGLang's tensor endpoints take, by reference (shared memory) or by value.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
B_STD = 0.02



class Trainer:
    """Holds the base weights and a LoRA whose B changes every step, like an RL trainer.

    ``step(k)`` returns the PEFT state dict of step k: A fixed per rank, B drawn from a
    generator seeded by (rank, k), so step k is the same tensors in every case.
    """

    def __init__(self, model_dir: Path, rank: int, base: dict | None):
        import torch

        cfg = json.loads((model_dir / "config.json").read_text())
        h, i = cfg["hidden_size"], cfg["intermediate_size"]
        kv = cfg["num_key_value_heads"] * cfg.get("head_dim", h // cfg["num_attention_heads"])
        self.layers = cfg["num_hidden_layers"]
        # module -> (in, out): q [h->h], k/v [h->kv], o [h->h], gate/up [h->i], down [i->h]
        self.dims = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h),
                     "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        self.rank, self.alpha = rank, 2 * rank
        self.model_dir, self.base = model_dir, base
        self.config = {
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": self.alpha,
            "target_modules": list(MODULES), "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
            "base_model_name_or_path": str(model_dir),
        }
        gen = torch.Generator().manual_seed(1000 + rank)
        self.A = {(layer, m): torch.randn(rank, self.dims[m][0], generator=gen) / self.dims[m][0] ** 0.5
                  for layer in range(self.layers) for m in MODULES}

    @staticmethod
    def key(layer: int, module: str, ab: str) -> str:
        part = "self_attn" if module in MODULES[:4] else "mlp"
        return f"base_model.model.model.layers.{layer}.{part}.{module}.lora_{ab}.weight"

    def step(self, k: int) -> dict:
        import torch

        gen = torch.Generator().manual_seed(self.rank * 1_000_003 + k)
        sd = {}
        for layer in range(self.layers):
            for m in MODULES:
                sd[self.key(layer, m, "A")] = self.A[(layer, m)].clone()
                sd[self.key(layer, m, "B")] = torch.randn(self.dims[m][1], self.rank, generator=gen) * B_STD
        return sd

    def merged(self, sd: dict) -> dict:
        """The base weights with W + (alpha/r) B A for every LoRA module: new tensors, base untouched."""
        import torch

        out = dict(self.base)
        scale = self.alpha / self.rank
        for layer in range(self.layers):
            for m in MODULES:
                part = "self_attn" if m in MODULES[:4] else "mlp"
                name = f"model.layers.{layer}.{part}.{m}.weight"
                out[name] = torch.addmm(self.base[name], sd[self.key(layer, m, "B")], sd[self.key(layer, m, "A")],
                                        alpha=scale)
        return out

    def write_peft(self, sd: dict, folder: Path) -> Path:
        from safetensors.torch import save_file

        folder.mkdir(parents=True, exist_ok=True)
        save_file(sd, str(folder / "adapter_model.safetensors"))
        (folder / "adapter_config.json").write_text(json.dumps(self.config, indent=2))
        return folder


def serialize(obj, how: str) -> str:
    """SGLang's payload for serialized_named_tensors, as a base64 string (JSON has no bytes)."""
    import pybase64

    if how == "bytes":
        return pybase64.b64encode(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)).decode()
    from sglang.srt.utils import MultiprocessingSerializer

    return MultiprocessingSerializer.serialize(obj, output_str=True)
