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


# Two things stop `--tp-size 2 --device cpu` in stock SGLang 0.5.23: init_model_parallel_group
# decides use_pynccl without looking at the device (a PyNcclCommunicator on CPU raises "Expected a
# cuda device"; without it, all-reduce goes to the group's gloo backend), and init_threads_binding
# asserts ranks <= NUMA nodes unless SGLANG_CPU_OMP_THREADS_BIND gives each rank its cores
# (process.py's default_thread_binding, called from flags.py, sets it).
_USE_PYNCCL_POSITION = 3  # init_model_parallel_group(group_ranks, local_rank, backend, use_pynccl, ...)


def _around_init_model_parallel_group(original, *args, **kwargs):
    if len(args) > _USE_PYNCCL_POSITION:
        args = args[:_USE_PYNCCL_POSITION] + (False,) + args[_USE_PYNCCL_POSITION + 1:]
    else:
        kwargs["use_pynccl"] = False
    return original(*args, **kwargs)
