"""Repeat launches of a Triton kernel for the price of its launcher, not of JITFunction.run.

Every ``kernel[grid](...)`` runs Triton's launch path in Python (triton/runtime/jit.py,
``JITFunction.run``, the same in Triton 3.6 and 3.8): it reads the debug and instrumentation
knobs, asks the driver for the device and the stream, binds and specializes every
argument, formats the launch options into a cache-key string, checks the kernel's
globals, and builds launch metadata for hooks: a LazyDict on every launch, because the
hook slot is an (empty) HookChain, never None, which the C launcher then calls twice. On
the H200 machine our shrink + expand spent 130-170 µs of host time per layer against
9-17 µs of device time; without a CUDA graph (prefill, and decode outside a graph)
host time is the op's time.

``FastLaunch(kernel)[grid](*args, **kwargs)`` launches as ``kernel[grid](...)`` does. The
first launch of each specialization goes through Triton (which compiles, or finds the
kernel in its cache) and keeps the CompiledKernel it returns (the first on a device takes
two: Triton makes its binder on the first); later launches of that specialization call its
launcher directly: Triton's binder, one dict lookup, the launch. The key is Triton's own
specialization, from Triton's own binder (each pointer's dtype and 16-byte alignment, each
int's width and divisibility by 16, each constexpr value) with the launch options, the
debug and instrumentation knobs and the device, so a compiled kernel is reused exactly where
Triton would reuse it. Example: a shrink launched with x at an offset of 8 bytes specializes
without the alignment hint, keys apart, and gets its own kernel, as under Triton.

A launcher that knows its shapes can skip the binder too: ``FAST.launch_planned(plan, pointers)``
launches ``kernel[plan.grid](*pointers, *plan.scalars, **plan.kwargs)``, where a ``LaunchPlan``
holds everything the launcher derived from shapes, strides, dtypes and its block-size table
(grid, ints, constexprs, options), made once per shape and kept in a ``LaunchPlans``. The
plan's key fixes every argument's specialization but the pointers' 16-byte alignment, so when
all pointers are aligned the plan's own kept launcher runs: per launch, the hooks check, one OR
of the pointers' addresses, a dict lookup and the launch. A misaligned pointer, and the first
launch of a plan on a device, take ``launch`` (Triton's binder and key).

Triton's own path runs whenever it would do more than launch: under the interpreter
(TRITON_INTERPRET=1 makes no compiled kernel), while a launch hook or a stages-inspection
hook is registered (profilers such as proton), or when the kernel has pre-run hooks. Not
followed: a change of the kernel's globals after its first launch (Triton checks them per launch).
"""

from __future__ import annotations

import functools
import operator

import torch

try:  # the knobs module (Triton >= 3.4) holds the launch hooks
    from triton import knobs as _knobs
except ImportError:  # an older Triton: every launch takes Triton's path
    _knobs = None


def launch_hooks_idle() -> bool:
    """No launch hook registered (Triton's enter/exit hooks are empty chains, or None), and no
    stages-inspection hook, which adds to Triton's own key (3.8)."""
    if _knobs is None:
        return False
    runtime = _knobs.runtime
    for hook in (runtime.launch_enter_hook, runtime.launch_exit_hook):
        if hook is not None and getattr(hook, "calls", True):  # a HookChain with calls, or a bare hook
            return False
    return getattr(runtime, "add_stages_inspection_hook", None) is None


def compile_knobs() -> tuple:
    """The knobs JITFunction.run puts into a launch's options, which pick the compiled kernel."""
    return _knobs.runtime.debug, _knobs.compilation.instrumentation_mode


def current_device() -> int:
    """The CUDA device Triton launches on (its driver asks torch.cuda.current_device)."""
    return torch._C._cuda_getDevice()


def current_stream(device: int) -> int:
    """The raw stream Triton launches on (its driver's get_current_stream)."""
    return torch._C._cuda_getCurrentRawStream(device)


class FastLaunch:
    """A ``@triton.jit`` kernel whose repeat launches skip ``JITFunction.run`` (module docstring).

    Indexed like the kernel: ``FAST[grid](*args, **constexprs_and_options)``.
    """

    def __init__(self, kernel):
        self.kernel = kernel
        # Triton's JITFunction keeps a binder per device; the interpreter's function has none.
        self.compiled_form = hasattr(kernel, "device_caches") and hasattr(kernel, "pre_run_hooks")
        # (device, knobs, specialization, options) -> (CompiledKernel, launcher, CUfunction, packed metadata);
        # the CompiledKernel is held so that its module stays loaded while its function is launched
        self._launchers: dict[tuple, tuple] = {}

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launch(grid, args, kwargs)

    def fast_path_open(self) -> bool:
        """A compiled kernel, no pre-run hooks, no launch or stages-inspection hook registered."""
        return self.compiled_form and not self.kernel.pre_run_hooks and launch_hooks_idle()

    def launch(self, grid, args: tuple, kwargs: dict) -> None:
        """Launch ``kernel[grid](*args, **kwargs)``, through Triton only on a new specialization."""
        self._launch(grid, args, kwargs)

    def _launch(self, grid, args: tuple, kwargs: dict):
        """``launch``; returns (the kept launcher, the bound arguments) when the fast path ran or
        kept one, else None."""
        if not self.fast_path_open():
            self.kernel[grid](*args, **kwargs)
            return None
        device = current_device()
        caches = self.kernel.device_caches.get(device)  # a defaultdict: .get creates nothing
        if caches is None:  # the first launch on this device makes Triton's binder
            self.kernel[grid](*args, **kwargs)
            return None
        bound, specialization, options = caches[4](*args, **kwargs)  # (cache, key cache, target, backend, binder)
        key = (device, compile_knobs(), tuple(specialization), tuple(options.items()))
        kept = self._launchers.get(key)
        if kept is None:
            kept = self._keep(key, self.kernel[grid](*args, **kwargs))
            return None if kept is None else (kept, bound)
        _, run, function, metadata = kept
        if callable(grid):  # as Triton does: a grid computed from the bound arguments
            grid = grid(bound)
        n = len(grid)
        # JITFunction.run's own call, less the launch metadata and the hooks (none registered)
        run(grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1, current_stream(device),
            function, metadata, None, None, None, *bound.values())
        return kept, bound

    def launch_planned(self, plan: "LaunchPlan", pointers: tuple) -> None:
        """Launch ``kernel[plan.grid](*pointers, *plan.scalars, **plan.kwargs)``; the pointers are the
        kernel's leading arguments (module docstring: planned launches)."""
        if not self.fast_path_open() or functools.reduce(operator.or_, map(_DATA_PTR, pointers)) & 15:
            self.launch(plan.grid, pointers + plan.scalars, plan.kwargs)
            return
        device = current_device()
        knobs = compile_knobs()
        kept = plan.kept.get((self, device, knobs))
        if kept is None:
            args = pointers + plan.scalars
            launched = self._launch(plan.grid, args, plan.kwargs)
            if launched is not None:
                (compiled, run, function, metadata), bound = launched
                values = tuple(bound.values())
                if all(v is a for v, a in zip(values, args)):  # the positional arguments lead, as in ours
                    plan.kept[self, device, knobs] = (run, function, metadata, values[len(args):], compiled)
            return
        run, function, metadata, constexprs, _ = kept
        grid = plan.grid
        run(grid[0], grid[1], grid[2], current_stream(device), function, metadata, None, None, None,
            *pointers, *plan.scalars, *constexprs)

    def _keep(self, key: tuple, compiled):
        """Keep the CompiledKernel a Triton launch returned (its launcher is ready after that launch)."""
        if compiled is None or not hasattr(compiled, "packed_metadata"):
            return None
        if len(self._launchers) > 4096:  # specializations are few; a bound, not a policy
            self._launchers.clear()
        kept = self._launchers[key] = (compiled, compiled.run, compiled.function, compiled.packed_metadata)
        return kept


_DATA_PTR = torch.Tensor.data_ptr


class LaunchPlan:
    """What a launcher derived from one shape: the grid (three ints), the int arguments after the
    pointers, the constexprs and options; and, per (kernel, device, compile knobs), the launcher
    kept from its first launch with all pointers aligned. Immutable but for ``kept``.
    ``extra`` is the launcher's own (the split-K workspace sizes of a shrink)."""

    __slots__ = ("grid", "scalars", "kwargs", "extra", "kept")

    def __init__(self, grid: tuple, scalars: tuple, kwargs: dict, extra=None):
        n = len(grid)
        self.grid = (grid[0], grid[1] if n > 1 else 1, grid[2] if n > 2 else 1)
        self.scalars, self.kwargs, self.extra = scalars, kwargs, extra
        self.kept: dict[tuple, tuple] = {}


class LaunchPlans(dict):
    """A launcher's plans by shape key; ``None`` for a shape with nothing to launch. Read with
    ``plans.get(key, MISSING)``, filled with ``keep``.

    The key must decide every int, constexpr and option of the launch and every pointer's dtype.
    ``forget_plans()`` drops every plan (the block-size tables changed). Bounded: prefill row
    counts vary without end, so a full cache starts over.
    """

    _all: list["LaunchPlans"] = []

    def __init__(self):
        super().__init__()
        LaunchPlans._all.append(self)

    def keep(self, key: tuple, plan: LaunchPlan | None) -> LaunchPlan | None:
        if len(self) > 8192:
            self.clear()
        self[key] = plan
        return plan


MISSING = object()


def forget_plans() -> None:
    """Drop every launcher's plans (``_config.reload_tables`` calls this)."""
    for plans in LaunchPlans._all:
        plans.clear()
