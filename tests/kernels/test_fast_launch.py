"""FastLaunch (kernels/_launch.py): a repeat launch passes what Triton's own launch passes, and
a compiled kernel is reused only where Triton would reuse it.

Triton's launch path runs for real here, on a stub driver whose compile records launches
(bench/_stubbed_launch.py); the kernel below is a real JITFunction (the suite's interpreter
makes ``@triton.jit`` give an interpreted one, so it is built directly).
"""

import importlib
import sys
from pathlib import Path

import pytest
import torch
import triton
import triton.language as tl
from triton import knobs

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _stubbed_launch import STREAM, stubbed_triton  # noqa: E402

from sglang_mint.kernels._launch import FastLaunch  # noqa: E402


def _axpy(x_ptr, y_ptr, n, stride, SCALE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(y_ptr + offs * stride, tl.load(x_ptr + offs, mask=offs < n) * SCALE, mask=offs < n)


def _kernel():
    return triton.runtime.jit.JITFunction(_axpy)


def _args(n=4096, stride=16, offset=0, dtype=torch.bfloat16):
    x = torch.randn(n + 8, dtype=torch.float32).to(dtype)[offset:offset + n]
    return x, torch.empty(n + 8, dtype=dtype), n, stride


def _launcher():
    """(a kernel, a ``launch(times=1, grid=(4,))`` of it through FastLaunch on one specialization)."""
    kernel = _kernel()
    fast, args = FastLaunch(kernel), _args()

    def launch(times=1, grid=(4,)):
        for _ in range(times):
            fast[grid](*args, SCALE=2, BLOCK=128)
    return kernel, launch


def _triton_launch(kernel, grid, args, kwargs):
    """What Triton's own path passes its launcher: one plain kernel[grid](...) in a fresh stub."""
    with stubbed_triton(kernel) as compiled:
        kernel[grid](*args, **kwargs)
    (stand_in,) = compiled[kernel]
    return stand_in.launches[0]


def test_a_repeat_launch_skips_triton_and_passes_what_triton_passes():
    kernel = _kernel()
    fast = FastLaunch(kernel)
    args, kwargs, grid = _args(), {"SCALE": 2, "BLOCK": 128, "num_warps": 4}, (32,)
    with stubbed_triton(kernel) as compiled:
        run_calls = []
        for _ in range(3):
            fast[grid](*args, **kwargs)
        (stand_in,) = compiled[kernel]
        assert len(stand_in.launches) == 3
        with pytest.MonkeyPatch.context() as mp:  # the third launch: Triton's run is not on the path
            mp.setattr(type(kernel), "run", lambda *a, **k: run_calls.append(a))
            fast[grid](*args, **kwargs)
        assert run_calls == [] and len(stand_in.launches) == 4
    expected = _triton_launch(_kernel(), grid, args, kwargs)
    fast_call = stand_in.launches[-1]
    # grid, stream, function and metadata in the same places; then the launch metadata and the two
    # hooks, which Triton passes as a LazyDict and two empty HookChains and FastLaunch as None
    assert fast_call[:4] == (32, 1, 1, STREAM)
    assert fast_call[4] is stand_in.function and fast_call[5] is stand_in.packed_metadata
    assert fast_call[6:9] == (None, None, None)
    assert expected[6] is not None and expected[7] is knobs.runtime.launch_enter_hook
    assert fast_call[9:] == expected[9:]  # every argument, constexprs included, in the kernel's order


@pytest.mark.parametrize("change", ["misaligned pointer", "int not divisible by 16", "int of 1",
                                    "int past 32 bits", "dtype", "constexpr", "num_warps"])
def test_a_new_specialization_goes_through_triton_and_gets_its_own_kernel(change):
    """Each change below makes Triton compile another kernel; FastLaunch must not launch the first."""
    kernel = _kernel()
    fast = FastLaunch(kernel)
    base = {"args": _args(), "kwargs": {"SCALE": 2, "BLOCK": 128, "num_warps": 4}}
    other = {"args": base["args"], "kwargs": dict(base["kwargs"])}
    x, y, n, stride = base["args"]
    if change == "misaligned pointer":
        other["args"] = _args(offset=1)  # bf16 at +2 bytes: no 16-byte alignment hint
    elif change == "int not divisible by 16":
        other["args"] = (x, y, n, 17)
    elif change == "int of 1":
        other["args"] = (x, y, n, 1)
    elif change == "int past 32 bits":
        other["args"] = (x, y, n, 2**33)
    elif change == "dtype":
        other["args"] = _args(dtype=torch.float16)
    elif change == "constexpr":
        other["kwargs"]["SCALE"] = 3
    else:
        other["kwargs"]["num_warps"] = 8
    with stubbed_triton(kernel) as compiled:
        for _ in range(2):
            fast[(4,)](*base["args"], **base["kwargs"])
        fast[(4,)](*other["args"], **other["kwargs"])
        fast[(4,)](*other["args"], **other["kwargs"])
        first, second = compiled[kernel]
        assert (len(first.launches), len(second.launches)) == (2, 2)
        fast[(4,)](*base["args"], **base["kwargs"])  # back to the first: its kernel again
        assert (len(first.launches), len(second.launches)) == (3, 2)
    compiled_for = [(k.signature, k.constexprs, k.attrs, str(k.options)) for k in (first, second)]
    assert compiled_for[0] != compiled_for[1]


def test_a_registered_launch_hook_keeps_triton_s_path():
    """A profiler's hook (proton registers one) must see every launch: FastLaunch steps aside."""
    kernel, launch = _launcher()
    seen = []
    with stubbed_triton(kernel) as compiled:
        launch(2)
        knobs.runtime.launch_enter_hook.add(seen.append)
        try:
            launch()
        finally:
            knobs.runtime.launch_enter_hook.remove(seen.append)
        (stand_in,) = compiled[kernel]
        assert stand_in.launches[-1][7] is knobs.runtime.launch_enter_hook  # Triton's launch, hook passed
        launch()
        assert stand_in.launches[-1][7] is None  # the hook gone: fast again


@pytest.mark.parametrize("owner,knob,value", [("runtime", "debug", True),
                                               ("compilation", "instrumentation_mode", "consan")])
def test_a_compile_knob_change_gets_its_own_kernel(owner, knob, value, monkeypatch):
    """Triton's run puts knobs.runtime.debug and knobs.compilation.instrumentation_mode into a launch's
    options: changed between launches, they pick another kernel, under FastLaunch as under Triton."""
    kernel, launch = _launcher()
    with stubbed_triton(kernel) as compiled:
        launch(3)
        monkeypatch.setattr(getattr(knobs, owner), knob, value)
        launch(3)
        first, second = compiled[kernel]
        assert (len(first.launches), len(second.launches)) == (3, 3)
        assert second.launches[-1][7] is None  # and the second goes fast too
        assert getattr(second.options, knob) == value


def test_a_stages_inspection_hook_keeps_triton_s_path(monkeypatch):
    """Triton 3.8 adds the hook's hash to its own key on every launch: FastLaunch steps aside while one is set."""
    kernel, launch = _launcher()
    with stubbed_triton(kernel) as compiled:
        launch(3)
        monkeypatch.setattr(knobs.runtime, "add_stages_inspection_hook", lambda: ("stages", "hash"))
        launch()
        assert compiled[kernel][-1].launches[-1][7] is knobs.runtime.launch_enter_hook  # Triton's own launch


def test_a_grid_computed_from_the_arguments_is_called_as_triton_calls_it():
    kernel, launch = _launcher()
    with stubbed_triton(kernel) as compiled:
        launch(3, grid=lambda meta: (triton.cdiv(meta["n"], meta["BLOCK"]),))
        (stand_in,) = compiled[kernel]
    assert stand_in.launches[-1][:3] == (32, 1, 1) and stand_in.launches[-1][7] is None


@pytest.mark.interp
def test_the_interpreter_s_kernels_launch_through_triton():
    """Under TRITON_INTERPRET=1 (this suite) @triton.jit gives no compiled kernel: FastLaunch only forwards."""
    from sglang_mint.kernels.sgmv_shrink import _sgmv_shrink_kernel

    assert isinstance(_sgmv_shrink_kernel, FastLaunch) and not _sgmv_shrink_kernel.compiled_form


@pytest.mark.gpu
def test_on_a_gpu_repeat_launches_go_fast_and_stay_right():
    """Real kernels: the third shrink of one specialization is FastLaunch's own launch, and its result
    equals the reference; x one element off its allocation (no alignment hint) gets its own kernel."""
    from kernel_cases import assert_close, dense_pool, poison, randn
    from sglang_mint.kernels import LoraBatch, sgmv_shrink, sgmv_shrink_ref
    from sglang_mint.kernels.sgmv_shrink import _sgmv_shrink_kernel

    gen = torch.Generator().manual_seed(11)
    shrink_plans = importlib.import_module("sglang_mint.kernels.sgmv_shrink")._PLANS
    shrink_plans.clear()
    T, K, S, R, ranks = 77, 4096, 3, 16, [16, 8, 16, 4]
    batch = LoraBatch.from_segments([20, 0, 40, 17], range(4), ranks, [1.0] * 4, "cuda")
    a, _ = dense_pool(4, S, R, K, 8, ranks, dtype=torch.bfloat16, device="cuda", gen=gen)
    for offset in (0, 0, 0, 1):
        x = randn(T * K + 1, dtype=torch.bfloat16, device="cuda", gen=gen)[offset:offset + T * K].view(T, K)
        kept = len(_sgmv_shrink_kernel._launchers)
        y, want = poison(T, S * R, dtype=torch.bfloat16, device="cuda"), poison(T, S * R, dtype=torch.bfloat16,
                                                                             device="cuda")
        sgmv_shrink(x, a, y, batch, S)
        sgmv_shrink_ref(x, a, want, batch, S)
        assert_close(y, want, torch.bfloat16)
    assert kept >= 1, "three launches of one specialization kept no compiled kernel"
    assert len(_sgmv_shrink_kernel._launchers) == kept + 1  # the misaligned x: a new specialization
    # the aligned launches ran from the shape's plan, which kept one launcher (the misaligned none)
    plans = [plan for plan in shrink_plans.values() if plan]
    assert [len(plan.kept) for plan in plans] == [1]
