"""Triton's launch path on a machine without a GPU: the host's side of a kernel launch, measured or checked.

``stubbed_triton(*kernels)`` puts a driver in place that names device 0, stream 1234 and an
sm90 target, and makes each kernel's compile return a ``RecordedKernel``, a stand-in whose
launcher records its arguments instead of calling CUDA. Everything else on the path is
Triton's own code: ``JITFunction.run`` with its binder, cache key, globals check and
launch metadata, and ``kernels/_launch.py`` around it. Used by bench/launch_overhead.py
(host µs per launch) and tests/kernels/test_fast_launch.py (what each launch passes).

What it leaves out, the same for both paths: the C launcher (argument parsing, cuLaunchKernelEx)
and its calls of the enter/exit hooks that Triton's own path passes it.
"""

from __future__ import annotations

import contextlib
from unittest import mock

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler.compiler import CompiledKernel
from triton.runtime import driver

from sglang_mint.kernels import _launch

STREAM = 1234


class StubDriver:
    """The three questions JITFunction.run and create_binder ask a driver."""

    def get_current_device(self):
        return 0

    def get_current_stream(self, device):
        return STREAM

    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)


class RecordedKernel:
    """A CompiledKernel stand-in: launches are recorded (or, with ``record=False``, dropped)."""

    def __init__(self, name: str, signature: dict, constexprs: dict, attrs: dict, options, record: bool):
        self.name = name
        self.signature, self.constexprs, self.attrs, self.options = signature, constexprs, attrs, options
        self.function, self.packed_metadata = object(), object()
        self.src = None  # not an ASTSource: launch_metadata returns its LazyDict as it does for ours
        self.launches: list[tuple] = []
        self.run = self._record if record else self._drop

    def _init_handles(self):
        pass

    launch_metadata = CompiledKernel.launch_metadata  # Triton's own, run on this stand-in

    def _record(self, *call):
        self.launches.append(call)

    def _drop(self, *call):
        pass


@contextlib.contextmanager
def stubbed_triton(*kernels, record: bool = True):
    """Within: each JITFunction in ``kernels`` compiles into a RecordedKernel (one per specialization,
    listed in ``compiled[kernel]``) and launches on the stub driver. Restores everything after."""
    compiled: dict = {k: [] for k in kernels}
    saved = driver._active

    def compile_into_record(kernel):
        def _do_compile(key, signature, device, constexprs, options, attrs, warmup):
            stand_in = RecordedKernel(kernel.fn.__name__, signature, constexprs, attrs, options, record)
            kernel.device_caches[device][0][key] = stand_in
            compiled[kernel].append(stand_in)
            return stand_in
        return _do_compile

    driver.set_active(StubDriver())
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(mock.patch.object(_launch, "current_device", lambda: 0))
            stack.enter_context(mock.patch.object(_launch, "current_stream", lambda device: STREAM))
            for kernel in kernels:
                assert isinstance(kernel, triton.runtime.jit.JITFunction), kernel
                stack.enter_context(mock.patch.object(kernel, "_do_compile", compile_into_record(kernel)))
                stack.enter_context(mock.patch.object(kernel, "device_caches", type(kernel.device_caches)(
                    kernel.create_binder)))
            yield compiled
    finally:
        driver._active = saved
