"""SGLang's own LoRADrainer with the plugin's pruning (sglang/lora_drainer.py): it keeps only the
adapters it drains, and decides what it decided before, step by step."""

from __future__ import annotations

import random
import types

import pytest

from sglang.srt.lora import lora_drainer as sglang_drainer
from sglang.srt.lora.lora_drainer import LoRADrainer
from sglang_mint.sglang.lora_drainer import PRUNED_ATTR, _after_can_schedule, _after_update_draining_state

SLOTS = 4
THRESHOLD_S = 1.0


class Clock:
    def __init__(self):
        self.now = 1000.0

    def monotonic(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(sglang_drainer, "time", clock)  # the drainer's starvation is read against it
    return clock


def request(lora_id: str, arrived: float, max_new_tokens: int = 64, made: int = 0):
    return types.SimpleNamespace(lora_id=lora_id, time_stats=types.SimpleNamespace(wait_queue_entry_time=arrived),
                                 sampling_params=types.SimpleNamespace(max_new_tokens=max_new_tokens),
                                 output_ids=[0] * made)


def drainer(pruned: bool) -> LoRADrainer:
    made = LoRADrainer(SLOTS, THRESHOLD_S)
    if pruned:
        setattr(made, PRUNED_ATTR, True)
    return made


def step(made: LoRADrainer, waiting, running):
    made.update_draining_state(waiting, running)
    _after_update_draining_state(None, made)  # the hooks, as SGLang's registry runs them after the method


def ask(made: LoRADrainer, req) -> bool:
    return _after_can_schedule(made.can_schedule(req), made, req)


def test_a_drainer_keeps_only_the_adapters_it_drains_not_every_one_it_has_seen(clock):
    stock, pruned = drainer(False), drainer(True)
    running = [request(f"hot/{i}@1", clock.now, made=i) for i in range(SLOTS)]
    for made in (stock, pruned):
        for i in range(2_000):  # an RL loop's publishes: each step a few new revisions wait, briefly
            waiting = [request(f"cold/{i}-{j}@1", clock.now) for j in range(3)]
            step(made, waiting, running)
            for r in waiting:
                assert ask(made, r)
    assert len(stock.adapter_to_stats) == 6_000 + SLOTS  # SGLang's own: every lora_id it ever saw
    assert pruned.adapter_to_stats == {}


def test_a_decode_server_s_drainer_which_is_only_asked_keeps_nothing(clock):
    """Under prefill-decode disaggregation the decode server asks can_schedule and never updates."""
    stock, pruned = drainer(False), drainer(True)
    for made in (stock, pruned):
        for i in range(1_000):
            assert ask(made, request(f"tenant/{i}@1", clock.now))
    assert len(stock.adapter_to_stats) == 1_000 and pruned.adapter_to_stats == {}


def test_a_pruned_drainer_decides_as_sglang_s_own_step_by_step(clock):
    """A random day of adapters arriving, waiting past the threshold and running: both drainers give the same
    answers to can_schedule and drain the same adapters for the same ones at every step."""
    rng = random.Random(3)
    stock, pruned = drainer(False), drainer(True)
    adapters = [f"a/{i}@{rev}" for i in range(12) for rev in (1, 2)]
    running, waiting = [], []
    drained = 0
    for _ in range(400):
        clock.now += rng.choice([0.1, 0.3, 0.7])
        # arrivals at distinct moments: SGLang breaks ties in wait time by set order, which follows each dict's
        # own history (and the hash seed), so with ties the two could pick alike adapters in another order
        waiting += [request(rng.choice(adapters), clock.now - rng.random() * 0.1, max_new_tokens=rng.randint(1, 64))
                    for _ in range(rng.randint(0, 3))]
        for made in (stock, pruned):
            step(made, waiting, running)
        draining = {a: s.is_draining_for for a, s in stock.adapter_to_stats.items() if s.is_draining_for}
        assert draining == {a: s.is_draining_for for a, s in pruned.adapter_to_stats.items()}
        drained += bool(draining)
        # admit as SGLang would: the drainer's answer, then the slots
        admitted = []
        for r in list(waiting):
            answers = ask(stock, r), ask(pruned, r)
            assert answers[0] == answers[1], r.lora_id
            in_slots = {x.lora_id for x in running + admitted}
            if answers[0] and (r.lora_id in in_slots or len(in_slots) < SLOTS):
                admitted.append(r)
                waiting.remove(r)
        running = [r for r in running + admitted if rng.random() < 0.8]  # some finish each step
        for r in running:
            r.output_ids.append(0)
    assert drained > 20  # the drainer really drained, many times
    assert len(pruned.adapter_to_stats) < len(stock.adapter_to_stats)


def test_drains_are_counted_once_each_as_they_begin(clock):
    from sglang_mint.sglang.lora_drainer import DRAINS_ATTR

    made = drainer(True)
    running = [request(f"hot/{i}@1", clock.now, made=i) for i in range(SLOTS)]
    waiting = [request("cold/a@1", clock.now)]
    step(made, waiting, running)
    assert getattr(made, DRAINS_ATTR) == 0  # not starving yet
    assert ask(made, running[0]) and made.adapter_to_stats == {}
    clock.now += 2 * THRESHOLD_S
    for _ in range(3):  # the same drain, step after step
        step(made, waiting, running)
    # the one with the fewest tokens left drains: hot/3, 3 of its 64 made
    assert getattr(made, DRAINS_ATTR) == 1 and made.adapter_to_stats["hot/3@1"].is_draining_for == "cold/a@1"
    assert list(made.adapter_to_stats) == ["hot/3@1"]
    running = running[:-1]  # hot/3 drained: it ended, cold/a took its slot
    step(made, [], running + [request("cold/a@1", clock.now)])
    assert made.adapter_to_stats == {}
    waiting = [request("cold/b@1", clock.now - 2 * THRESHOLD_S)]
    step(made, waiting, running + [request("cold/a@1", clock.now)])
    assert getattr(made, DRAINS_ATTR) == 2
