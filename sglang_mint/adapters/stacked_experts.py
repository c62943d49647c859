"""Per-expert LoRA tensors -> one 3D tensor per layer-module, the form an adapter is held in.

A PEFT adapter of a 128-expert, 48-layer MoE names every expert's tensors apart:
``...mlp.experts.7.gate_proj.lora_A.weight`` [r, in], 36,864 tensors of a few
KB each. Held like that, each is its own allocation and tensor object: the
allocator's per-chunk cost and the holes left between them make the process
grow well past the tensor bytes (a 12,290-tensor adapter: about 40% past), and
the engine fills its pool one expert at a time. Stacked, a layer-module is one
``...mlp.experts.gate_proj.lora_A.weight`` [E, r, in] (B [E, out, r]), which
SGLang's pool reads as its "shared outer" expert layout, expert e at row e.

Example, 4 experts, rank 2, in 64: ``layers.0.mlp.experts.{0..3}.up_proj.lora_A.weight``
[2, 64] each -> ``layers.0.mlp.experts.up_proj.lora_A.weight`` [4, 2, 64].

A group is stacked only when it has exactly experts 0..E-1 of the base model,
all of one shape and dtype; anything else stays as it was.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

_PER_EXPERT = re.compile(r"^(?P<pre>.*\.experts)\.(?P<e>\d+)\.(?P<rest>.+)$")


def stack_experts(tensors: dict[str, "torch.Tensor"], num_experts: int | None) -> dict[str, "torch.Tensor"]:
    """``tensors`` with every complete per-expert group stacked (see the module doc), in the
    caller's order (a group where its expert 0 was). The same dict comes back when nothing stacks."""
    groups = _groups({k: (t.dtype, tuple(t.shape)) for k, t in tensors.items()}, num_experts)
    if not groups:
        return tensors
    import torch

    gone = {k for members in groups.values() for k in members}
    out = {}
    for key, t in tensors.items():
        if key in groups:
            name, members = _stacked_name(key), groups[key]
            out[name] = torch.stack([tensors[k] for k in members])
        elif key not in gone:
            out[key] = t
    return out


def held_tensor_count(header: dict[str, tuple], num_experts: int | None) -> int:
    """How many tensors ``stack_experts`` leaves of a safetensors header ({key: (dtype, shape)})."""
    groups = _groups(header, num_experts)
    return len(header) - sum(len(members) - 1 for members in groups.values())


def _groups(dtype_shapes: dict[str, tuple], num_experts: int | None) -> dict[str, list[str]]:
    """{expert 0's key: the group's keys in expert order} of every group that stacks."""
    if not num_experts:
        return {}
    groups: dict[str, dict[int, str]] = {}
    for key in dtype_shapes:
        m = _PER_EXPERT.match(key)
        if m:
            groups.setdefault(f"{m['pre']}.{m['rest']}", {})[int(m["e"])] = key
    out = {}
    for members in groups.values():
        if sorted(members) != list(range(num_experts)):
            continue
        keys = [members[e] for e in range(num_experts)]
        if len({(dtype_shapes[k][0], tuple(dtype_shapes[k][1])) for k in keys}) == 1:
            out[keys[0]] = keys
    return out


def _stacked_name(key: str) -> str:
    m = _PER_EXPERT.match(key)
    return f"{m['pre']}.{m['rest']}"
