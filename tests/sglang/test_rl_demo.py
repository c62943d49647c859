"""`mint demo rl`, end to end: four policies trained at once against one real SGLang server.

The demo runs as the user runs it (the venv's ``mint``, its own process, so no module
imported by another test changes the HF numerics it compares against). Its ``--json``
record says, per policy, which revision each step's batch was sampled from, which it
published, and how far the engine's logprobs of that batch were from HF's for the
weights of the pinned revision.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sglang_mint.dev.rl_demo import NEW_TOKENS, ON_POLICY_TOLERANCE, PROMPTS, SAMPLES_PER_PROMPT
from sglang_mint.dev.rl_policy import TARGET_CLASSES

pytestmark = pytest.mark.server  # starts a real SGLang server: not in make test-fast

POLICIES = 4
STEPS = 3


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(the finished process, its record) of one `mint demo rl --policies 4 --steps 3`."""
    out = tmp_path_factory.mktemp("rl-demo") / "record.json"
    mint = Path(sys.executable).with_name("mint")
    proc = subprocess.run([str(mint), "demo", "rl", "--policies", str(POLICIES), "--steps", str(STEPS),
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    record = json.loads(out.read_text()) if out.exists() else None
    return proc, record


def test_exits_zero_and_reports_every_policy(run):
    proc, record = run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert record["ok"] and record["problems"] == []
    assert sorted(record["per_policy"]) == [f"rl/policy-{k}" for k in range(POLICIES)]
    assert len(record["step_wall_s"]) == STEPS
    for k in range(POLICIES):
        assert f"rl/policy-{k}: reward " in proc.stdout


def test_one_revision_per_step_numbered_consecutively(run):
    _, record = run
    for adapter_id, p in record["per_policy"].items():
        # revision 1 before the first step, then one per step
        assert p["published"] == [f"{adapter_id}@{n}" for n in range(1, STEPS + 2)]


def test_each_batch_was_sampled_from_the_revision_it_pinned(run):
    """Step s samples from the revision step s-1 published, and the engine's logprobs of every
    sampled token are those of that revision's weights, to a tolerance far below what one
    training step changes (so a batch served by the revision before or after would fail)."""
    _, record = run
    for adapter_id, p in record["per_policy"].items():
        assert p["sampled"] == p["published"][:-1]
        assert len(p["logprob_gap"]) == STEPS
        for gap, neighbour in zip(p["logprob_gap"], p["neighbour_gap"]):
            assert gap <= ON_POLICY_TOLERANCE
            assert neighbour > 10 * ON_POLICY_TOLERANCE


def test_rewards_are_each_policys_own(run):
    """Each batch's reward is the share of its tokens in the policy's own class, and the policies
    are paid for different classes."""
    _, record = run
    tokens = len(PROMPTS) * SAMPLES_PER_PROMPT * NEW_TOKENS
    targets = [p["target_class"] for p in record["per_policy"].values()]
    assert len(set(targets)) == POLICIES
    for p in record["per_policy"].values():
        for reward, shares in zip(p["reward"], p["class_shares"]):
            assert len(shares) == TARGET_CLASSES and sum(shares) == pytest.approx(1.0, abs=1e-3)
            assert reward == pytest.approx(shares[p["target_class"]], abs=1e-3)
            assert (reward * tokens) == pytest.approx(round(reward * tokens), abs=0.1)
