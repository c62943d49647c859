"""MintPublishCallback when a publish fails: the trainer hears of it by default, or it is logged.

The server is a closed loopback port (nothing listens on 127.0.0.1:1), so every publish fails to
connect; the callback is driven as ``transformers.Trainer`` drives it (``on_step_end``).
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from sglang_mint.client import MintClient

CLOSED = "http://127.0.0.1:1"


def step(callback, adapter_folder, global_step: int = 1) -> None:
    state = SimpleNamespace(is_world_process_zero=True, global_step=global_step, epoch=0.5)
    callback.on_step_end(SimpleNamespace(), state, SimpleNamespace(), model=str(adapter_folder))


def test_a_failed_publish_stops_training_by_default(tiny_adapters):
    from sglang_mint.client import MintPublishCallback

    callback = MintPublishCallback(MintClient(CLOSED, timeout=5), "rl/policy", every_n_steps=1, durable=False)
    with pytest.raises(OSError):
        step(callback, tiny_adapters["tiny-0000"])
    assert callback.published == []


def test_a_failed_publish_is_logged_and_training_goes_on_when_asked(tiny_adapters, caplog):
    from sglang_mint.client import MintPublishCallback

    callback = MintPublishCallback(CLOSED, "rl/policy", every_n_steps=1, raise_errors=False)
    with caplog.at_level(logging.ERROR, logger="sglang_mint"):
        step(callback, tiny_adapters["tiny-0000"], global_step=1)
        step(callback, tiny_adapters["tiny-0000"], global_step=2)
    failures = [r.getMessage() for r in caplog.records if "publishing rl/policy" in r.getMessage()]
    assert [m.split(" failed")[0] for m in failures] == ["publishing rl/policy at step 1",
                                                         "publishing rl/policy at step 2"], failures
    assert callback.published == []
