"""One policy of ``mint demo rl``: a PEFT LoRA on an HF model, a toy reward, a policy-gradient step.

    base = load_base(model_dir)                 # the base weights, loaded once for every policy
    policy = Policy(0, base, policies=4)
    stats = policy.update(groups)               # groups: one Group per prompt, sampled by the engine

Each policy holds its own LoRA (r=8 on q, k, v, o, gate, up, down; B drawn non-zero, so
every policy differs from the base model from its first revision) and its own Adam. The
base weights are shared: every policy's model is a copy of the base model's modules whose
parameters are the same tensors, so K policies cost one base model and K adapters.

Reward: policy k is paid for each generated token whose id is k modulo ``TARGET_CLASSES``
(an eighth of the vocabulary, a different eighth for each of the first 8 policies), so the
policies pull their adapters apart. A sequence's reward is the share of its tokens that
pay, e.g. 8 tokens of which 3 pay: 0.375. At temperature 1.0 the tiny random model starts
near 1/8.

Update (REINFORCE with GRPO's group normalisation, per token): each prompt is sampled
several times (a group); a generated token's advantage is its pay (1 or 0) less the mean
pay over its group's tokens, over their standard deviation; the loss is
``-mean(advantage * logprob(token))`` over every generated token, with logprobs recomputed
by the HF model, then one Adam step. Paying tokens rather than whole sequences gives the
few steps of a demo a clear signal: on the tiny model, after four updates at this learning
rate, each policy's mean reward went from about 0.13 to between 0.4 and 0.97 (two runs).

Before the step the HF logprobs are compared with the engine's (``logprob_gap``: small
when the engine sampled from exactly these weights, i.e. on-policy); after it, the same
tokens are scored again (``neighbour_gap``: how far the next revision is from this one,
the resolution of that check).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

LORA_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LORA_RANK = 8
LORA_ALPHA = 16
INIT_B_STD = 0.02  # the initial LoRA's B: non-zero, so revision 1 is not the base model
TARGET_CLASSES = 8
LEARNING_RATE = 4e-2


@dataclass
class Group:
    """One prompt sampled several times: ``outputs[i]`` are the engine's token ids of sample i and
    ``engine_logprobs[i]`` the engine's logprob of each of them."""

    prompt_ids: list[int]
    outputs: list[list[int]]
    engine_logprobs: list[list[float]]


def load_base(model_dir: str | Path):
    """The base HF model (fp32, CPU, eval mode, no gradients), loaded once for all policies."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def shared_copy(base):
    """A copy of ``base``'s modules whose parameters are ``base``'s own tensors (no weight is copied):
    PEFT can wrap the copy's Linear layers without touching ``base`` or another copy."""
    return copy.deepcopy(base, memo={id(p): p for p in base.parameters()})


class Policy:
    """Policy ``index`` of ``policies``: its LoRA, optimizer, reward and the revision it serves."""

    def __init__(self, index: int, base, *, seed: int = 0, lr: float = LEARNING_RATE):
        import torch
        from peft import LoraConfig, get_peft_model

        from sglang_mint.dev.tiny import randomize_lora

        self.index = index
        self.adapter_id = f"rl/policy-{index}"
        self.target = index % TARGET_CLASSES
        config = LoraConfig(r=LORA_RANK, lora_alpha=LORA_ALPHA, target_modules=list(LORA_MODULES),
                            lora_dropout=0.0)
        self.model = get_peft_model(shared_copy(base), config)
        randomize_lora(self.model, seed * 1_000_003 + 7919 * (index + 1), INIT_B_STD)
        self.optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=lr)
        self.served_name: str | None = None  # "<adapter_id>@<revision>" of its last publish
        self.revision = 0

    @property
    def lora_config(self):
        return self.model.peft_config["default"]

    def reward(self, token_ids: list[int]) -> float:
        """The share of ``token_ids`` whose id is this policy's target modulo TARGET_CLASSES."""
        return sum(1 for t in token_ids if t % TARGET_CLASSES == self.target) / max(1, len(token_ids))

    def token_logprobs(self, prompt_ids: list[int], outputs: list[list[int]]):
        """HF's logprob of each generated token given the prompt and the tokens before it: [samples, tokens]."""
        import torch

        ids = torch.tensor([prompt_ids + out for out in outputs])
        targets = torch.tensor(outputs)
        logits = self.model(input_ids=ids).logits[:, len(prompt_ids) - 1:-1]
        return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets[..., None]).squeeze(-1)

    def update(self, groups: list[Group]) -> dict:
        """One policy-gradient step on the engine's samples; returns the batch's mean reward, the loss,
        and the largest logprob gaps to the engine (before the step) and to the next revision (after)."""
        import torch

        self.model.train()
        rewards, losses, engine_gap, before = [], [], 0.0, []
        n_tokens = sum(len(out) for g in groups for out in g.outputs)
        for g in groups:
            paid = torch.tensor([[float(t % TARGET_CLASSES == self.target) for t in out] for out in g.outputs])
            advantage = (paid - paid.mean()) / (paid.std(unbiased=False) + 1e-6)
            logprobs = self.token_logprobs(g.prompt_ids, g.outputs)
            engine = torch.tensor(g.engine_logprobs)
            engine_gap = max(engine_gap, (logprobs.detach() - engine).abs().max().item())
            loss = -(advantage * logprobs).sum() / n_tokens
            loss.backward()  # gradients add up over the groups: one step for the whole batch
            rewards += [self.reward(out) for out in g.outputs]
            losses.append(loss.item())
            before.append(logprobs.detach())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        with torch.no_grad():
            neighbour_gap = max((self.token_logprobs(g.prompt_ids, g.outputs) - b).abs().max().item()
                                for g, b in zip(groups, before))
        return {"reward": sum(rewards) / len(rewards), "loss": sum(losses),
                "logprob_gap": engine_gap, "neighbour_gap": neighbour_gap}

    def lora_state_dict(self) -> dict:
        """The adapter's tensors as PEFT saves them (``...q_proj.lora_A.weight``), detached."""
        from peft import get_peft_model_state_dict

        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}
