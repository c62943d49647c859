"""Make SGLang's LoRA path run on a machine without a CUDA device.

SGLang's LoRA layers and backends ask for pinned host memory unconditionally
(``torch.tensor(..., pin_memory=True)``, ``tensor.pin_memory()``), which raises
"Found no NVIDIA driver" without CUDA. Pinning only speeds up host-to-device
copies, and there is no device here, so it becomes a no-op. This applies in
every SGLang process (the scheduler is a spawned process) on machines where
``torch.cuda.is_available()`` is False, with or without ``--enable-mint``: it
only turns a crash into working code and changes nothing that ran before.
"""

from __future__ import annotations


def _unpin_kwargs(*args, **kwargs):
    if kwargs.get("pin_memory"):
        kwargs["pin_memory"] = False
        return args, kwargs
    return None


def _pin_memory_noop(self, *args, **kwargs):
    return self
