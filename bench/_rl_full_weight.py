"""The engine side of bench/rl_loop_bench.py's baseline: K policies on one stock SGLang engine, no LoRA.

A stock engine holds one set of weights, so K policies take turns: to sample a batch
for policy k, the engine's weights are swapped for policy k's merged weights
(W + (alpha/r) B A of every LoRA module) through the path bench/handoff_bench.py's
case c measured fastest, ``/begin_weight_update``, ``/update_weights_from_tensor``
(every weight of the model, as a shared-memory payload), ``/end_weight_update``, and
the batch is sampled while no other policy may swap. K policies are K full-weight
swaps per step, one after another; the updates themselves still run concurrently.

``publish`` merges in the policy's own thread (the trainer's side of a full-weight
handoff); ``sample`` swaps and samples under the engine's lock. The unchanged base
tensors are moved to shared memory once, before any policy runs, so every payload
names them rather than copying them: the engine still reads every weight at each swap.
"""

from __future__ import annotations

import threading
import time

from _handoff_harness import post
from _handoff_trainer import serialize
from sglang_mint.dev.rl_demo import generate
from sglang_mint.dev.rl_policy import LORA_ALPHA, LORA_RANK


class FullWeightEngine:
    name = "full"

    def __init__(self, url: str, base_weights: dict):
        """``base_weights``: the model's tensors by checkpoint name (``model.layers.0.self_attn.q_proj.weight``)."""
        self.url = url
        self.base = base_weights
        for tensor in self.base.values():
            tensor.share_memory_()  # once, before any thread reads them
        self.lock = threading.Lock()
        self.merged: dict[str, tuple[str, dict]] = {}  # adapter id -> (name, its merged weights)
        self.holding: str | None = None  # the name whose weights the engine holds
        self.swaps: list[float] = []  # seconds of each swap

    def merge(self, lora: dict) -> dict:
        """The base weights with W + (alpha/r) B A for every LoRA module: new tensors for those, the
        base's own (shared) tensors for the rest."""
        import torch

        out = dict(self.base)
        for key, a in lora.items():
            if ".lora_A." not in key:
                continue
            b = lora[key.replace(".lora_A.", ".lora_B.")]
            name = key.removeprefix("base_model.model.").replace(".lora_A.weight", ".weight")
            out[name] = torch.addmm(self.base[name], b, a, alpha=LORA_ALPHA / LORA_RANK)
        return out

    def publish(self, policy, revision: int, metadata: dict) -> str:
        name = f"{policy.adapter_id}@{revision}"
        merged = self.merge(policy.lora_state_dict())
        with self.lock:
            self.merged[policy.adapter_id] = (name, merged)
        return name

    def sample(self, policy, name: str, prompt_ids: list[list[int]]):
        with self.lock:
            if self.holding != name:
                held, merged = self.merged[policy.adapter_id]
                if held != name:
                    raise RuntimeError(f"{policy.adapter_id}: asked to sample {name}, merged {held}")
                t0 = time.perf_counter()
                payload = serialize(list(merged.items()), "shm")
                post(self.url + "/begin_weight_update", {})
                try:
                    post(self.url + "/update_weights_from_tensor", {"serialized_named_tensors": [payload]})
                finally:
                    post(self.url + "/end_weight_update", {})
                self.swaps.append(time.perf_counter() - t0)
                self.holding = name
            return generate(self.url, prompt_ids)
