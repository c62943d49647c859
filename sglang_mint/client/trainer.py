"""``MintPublishCallback``: a ``transformers`` Trainer hands its adapter to a live server.

::

    from sglang_mint.client import MintPublishCallback

    trainer = Trainer(model=peft_model, ..., callbacks=[
        MintPublishCallback("http://127.0.0.1:30000", "acme/bot", every_n_steps=50)])

Every 50 optimizer steps, and at each checkpoint save, the adapter's weights
go from memory to the server as a new revision of ``acme/bot`` with metadata
``{"global_step": ..., "epoch": ...}``; requests arriving after that are served
by it. A step is published once even when it is also a save step. Only the
main process publishes. A refused or failed publish stops training with the
error (``raise_errors=False`` logs it and goes on). ``durable=False`` publishes
each step as an RL loop does (see MintClient.publish).
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from sglang_mint.client import MintClient, Published
from sglang_mint.errors import MintError

logger = logging.getLogger("sglang_mint")


class MintPublishCallback(TrainerCallback):
    def __init__(self, server: str | MintClient, adapter_id: str, *, every_n_steps: int | None = None,
                 on_save: bool = True, adapter_name: str = "default", metadata: dict | None = None,
                 wait: bool = False, raise_errors: bool = True, durable: bool = True):
        if every_n_steps is not None and every_n_steps <= 0:
            raise ValueError(f"every_n_steps must be positive, got {every_n_steps}")
        self.client = server if isinstance(server, MintClient) else MintClient(server)
        self.adapter_id = adapter_id
        self.every_n_steps = every_n_steps
        self.publish_on_save = on_save
        self.adapter_name = adapter_name
        self.metadata = dict(metadata or {})
        self.wait = wait
        self.raise_errors = raise_errors
        self.durable = durable
        self.published: list[Published] = []
        self._last_step: int | None = None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.every_n_steps and state.global_step % self.every_n_steps == 0:
            self._publish(model, state)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.publish_on_save:
            self._publish(model, state)

    def _publish(self, model, state) -> None:
        if not state.is_world_process_zero or model is None or self._last_step == state.global_step:
            return
        self._last_step = state.global_step
        metadata = {**self.metadata, "global_step": state.global_step, "epoch": state.epoch}
        try:
            pub = self.client.publish(self.adapter_id, model, adapter_name=self.adapter_name, metadata=metadata,
                                      durable=self.durable)
            if self.wait:
                self.client.wait_until_served(self.adapter_id, pub.revision)
        except (MintError, OSError, TimeoutError) as exc:
            if self.raise_errors:
                raise
            logger.error("publishing %s at step %d failed: %s", self.adapter_id, state.global_step, exc)
            return
        self.published.append(pub)
        logger.info("published %s at step %d", pub.name, state.global_step)
