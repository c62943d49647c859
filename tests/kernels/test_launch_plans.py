"""Planned launches (kernels/_launch.py ``launch_planned``, the shrink and expand launchers' plans).

A launcher keeps one plan per shape key and launches repeat shapes from it without Triton's
binder. Two things could go wrong: a key that misses something the plan depends on (a stale
grid or stride: wrong results), and a planned launch that passes other than Triton would.
The first is checked under the interpreter against the references, on calls that share all
but one part of the key, one after another; the second on the stub driver of
bench/_stubbed_launch.py with the real shrink kernel.
"""

import importlib
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
import triton
from triton import knobs

from kernel_cases import assert_close, dense_pool, poison, randn
from sglang_mint.kernels import LoraBatch, _config, sgmv_expand, sgmv_expand_ref, sgmv_shrink, sgmv_shrink_ref
from sglang_mint.kernels._launch import FastLaunch

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from _stubbed_launch import STREAM, stubbed_triton  # noqa: E402

shrink_module = importlib.import_module("sglang_mint.kernels.sgmv_shrink")
expand_module = importlib.import_module("sglang_mint.kernels.sgmv_expand")

K, R, S = 64, 16, 3
RANKS = [16, 8, 16, 4]


def _segments(lens, slots=(0, 2), permutation=None):
    return LoraBatch.from_segments(lens, slots, RANKS, [0.5, 1.0, 2.0, 1.5], permutation=permutation)


# each case differs from the one before it in one part of the shrink's plan key
SHRINK_CASES = {
    "base": dict(T=20, batch=lambda: _segments([10, 10])),
    "longest segment": dict(T=20, batch=lambda: _segments([2, 18])),   # a second M tile
    "permutation": dict(T=20, batch=lambda: _segments([2, 18], permutation=list(range(19, -1, -1)))),
    "row count": dict(T=36, batch=lambda: _segments([18, 18])),
    "row stride": dict(T=36, batch=lambda: _segments([18, 18]), x_stride=K + 16),
    "per-token form": dict(T=36, batch=lambda: LoraBatch.from_token_slots(
        [i % 4 - 1 for i in range(36)], RANKS, [1.0] * 4)),
    "one slice": dict(T=36, batch=lambda: _segments([18, 18]), n_slices=1),
    "unpacked slices": dict(T=36, batch=lambda: _segments([18, 18]), packed=False),
    # fp16: the interpreter's tl.dot gets bf16 wrong (the same call is right on a GPU)
    "dtype": dict(T=36, batch=lambda: _segments([18, 18]), dtype=torch.float16),
}


@pytest.mark.interp
def test_shrink_plans_follow_every_part_of_the_shape():
    """Calls one after another, each one part of the key away from the last: each equals the reference."""
    gen = torch.Generator().manual_seed(5)
    shrink_module._PLANS.clear()
    for name, case in SHRINK_CASES.items():
        dtype, n_slices = case.get("dtype", torch.float32), case.get("n_slices", S)
        packed = case.get("packed", True)
        a, _ = dense_pool(4, S, R, K, 8, RANKS, packed=packed, dtype=dtype, gen=gen)
        T, stride = case["T"], case.get("x_stride", K)
        x = randn(T, stride, dtype=dtype, gen=gen)[:, :K]
        batch = case["batch"]()
        for _ in range(2):  # the second call launches from the kept plan
            got, want = poison(T, S * R, dtype=dtype), poison(T, S * R, dtype=dtype)
            sgmv_shrink(x, a, got, batch, n_slices, packed)
            sgmv_shrink_ref(x, a, want, batch, n_slices, packed)
            assert_close(got, want, dtype), name
    assert len(shrink_module._PLANS) == len(SHRINK_CASES)


@pytest.mark.interp
@pytest.mark.parametrize("offsets", [(0, 128, 256, 384), (0, 64, 128, 384), (0, 256, 320, 384)])
def test_expand_plans_follow_the_slice_offsets(offsets):
    """Equal totals, other widths (a slice past 128 columns takes a second N tile): a plan kept for
    one set of offsets must not serve another."""
    gen = torch.Generator().manual_seed(6)
    batch = _segments([10, 10])
    for earlier in ((0, 128, 256, 384), offsets):  # the first plan is warm when the second comes
        _, b = dense_pool(4, S, R, K, 384, RANKS, gen=gen)
        y = randn(20, S * R, gen=gen)
        out0 = randn(20, 384, gen=gen)
        got, want = out0.clone(), out0.clone()
        sgmv_expand(y, b, got, batch, torch.tensor(earlier, dtype=torch.int32), earlier)
        sgmv_expand_ref(y, b, want, batch, torch.tensor(earlier, dtype=torch.int32), earlier)
        assert_close(got, want)


def test_reloading_the_tables_drops_the_plans(tmp_path, monkeypatch):
    shrink_module._PLANS.keep(("a shape",), None)
    monkeypatch.setattr(_config, "CONFIG_DIR", tmp_path)
    _config.reload_tables()
    assert len(shrink_module._PLANS) == 0


def _jit(module=shrink_module, name="_sgmv_shrink_kernel"):
    """A kernel as a compiled-form JITFunction (the suite's interpreter made an interpreted one);
    its cache key is set, as its helpers are interpreted functions Triton's hashing refuses."""
    kernel = triton.runtime.jit.JITFunction(getattr(module, name).kernel.fn)
    kernel.hash, kernel.used_global_vals = "stub", {}
    return kernel


_jit_shrink = _jit


def _shrink_call(offset=0, dtype=torch.bfloat16, T=40):
    x = torch.zeros(T * K + 8, dtype=dtype)[offset:offset + T * K].view(T, K)
    a = torch.zeros(4, S * R, K, dtype=dtype)
    return x, a, torch.zeros(T, S * R, dtype=dtype), _segments([T // 2, T - T // 2])


def test_planned_launches_pass_what_triton_passes_and_pick_triton_s_kernel():
    aligned, misaligned, half = _shrink_call(), _shrink_call(offset=1), _shrink_call(dtype=torch.float16)
    calls = [aligned, aligned, aligned, misaligned, misaligned, misaligned, half, half, half, aligned]
    fast_kernels, fast = _run(calls, planned=True)
    plans = list(shrink_module._PLANS.values())  # bf16, then fp16
    triton_kernels, slow = _run(calls, planned=False)
    # one compiled kernel per specialization, the same three as Triton's, in the same order
    spec = [(k.signature, k.constexprs, k.attrs, str(k.options)) for k in fast_kernels]
    assert spec == [(k.signature, k.constexprs, k.attrs, str(k.options)) for k in triton_kernels]
    assert len(spec) == 3
    for i, (f, t) in enumerate(zip(fast, slow)):
        assert fast_kernels.index(f[0]) == triton_kernels.index(t[0]), i  # the same compiled kernel
        assert f[1][:4] == t[1][:4] and f[1][4] is f[0].function, i  # grid, stream, function
        assert f[1][9:] == t[1][9:], i  # every argument, constexprs included, in the kernel's order
    # Triton passes its hooks, a fast launch None: the first launch on a device takes Triton's
    # path twice (it makes the binder), each new specialization once
    assert [f[1][7] is None for f in fast] == [False, False, True, False, True, True, False, True, True, True]
    # a plan keeps only launchers of all-aligned pointers: the misaligned x (the bf16 plan's shapes)
    # went through the binder every time, and kept kernel 1 in FastLaunch's own table only
    assert [[kept[-1] for kept in plan.kept.values()] for plan in plans] == [[fast_kernels[0]], [fast_kernels[2]]]
    assert all(t[1][7] is knobs.runtime.launch_enter_hook for t in slow)


def _run(calls, planned: bool):
    """Shrink calls on the stub driver: (compiled stand-ins, [(stand-in, its launch) per call])."""
    kernel = _jit_shrink()
    shrink_module._PLANS.clear()
    out = []
    with stubbed_triton(kernel) as compiled:
        if planned:
            launcher = FastLaunch(kernel)
        else:  # Triton's own launch of what the plan holds
            launcher = mock.Mock(launch_planned=lambda plan, pointers: kernel[plan.grid](
                *pointers, *plan.scalars, **plan.kwargs))
        with mock.patch.object(shrink_module, "_sgmv_shrink_kernel", launcher):
            for call in calls:
                before = {id(k): len(k.launches) for k in compiled[kernel]}
                sgmv_shrink(*call, S)
                (launched,) = [k for k in compiled[kernel] if len(k.launches) != before.get(id(k), 0)]
                out.append((launched, launched.launches[-1]))
    assert all(call[STREAM_AT] == STREAM for _, call in out)
    return compiled[kernel], out


STREAM_AT = 3


def test_a_launch_hook_keeps_planned_launches_on_triton_s_path():
    kernel = _jit_shrink()
    shrink_module._PLANS.clear()
    call = _shrink_call()
    seen = []
    with stubbed_triton(kernel) as compiled, \
            mock.patch.object(shrink_module, "_sgmv_shrink_kernel", FastLaunch(kernel)):
        for _ in range(3):
            sgmv_shrink(*call, S)
        knobs.runtime.launch_enter_hook.add(seen.append)
        try:
            sgmv_shrink(*call, S)
        finally:
            knobs.runtime.launch_enter_hook.remove(seen.append)
        (stand_in,) = compiled[kernel]
        assert [c[7] is None for c in stand_in.launches] == [False, False, True, False]


def test_numpy_host_values_launch_and_share_the_plan_of_their_ints():
    """Offsets and slice counts computed with numpy equal their ints, so they key the same plan, and
    Triton refuses numpy ints as arguments: both forms launch, in either order, from one plan."""
    import numpy as np

    kernel = _jit(expand_module, "_sgmv_expand_kernel")
    batch = _segments([10, 10])
    y, b, out = torch.zeros(20, S * R), torch.zeros(4, 384, R), torch.zeros(20, 384)
    ints = (0, 128, 256, 384)
    expand_module._PLANS.clear()
    with stubbed_triton(kernel) as compiled, \
            mock.patch.object(expand_module, "_sgmv_expand_kernel", FastLaunch(kernel)):
        for offsets in (tuple(np.cumsum([0, 128, 128, 128])), ints, list(np.array(ints))):
            sgmv_expand(y, b, out, batch, torch.tensor(ints, dtype=torch.int32), offsets)
        assert sum(len(k.launches) for k in compiled[kernel]) == 3
    assert len(expand_module._PLANS) == 1
    x, a, y = torch.zeros(20, K), torch.zeros(4, S * R, K), torch.zeros(20, S * R)
    kernel = _jit()
    shrink_module._PLANS.clear()
    with stubbed_triton(kernel) as compiled, \
            mock.patch.object(shrink_module, "_sgmv_shrink_kernel", FastLaunch(kernel)):
        for n_slices in (np.int64(S), S):
            sgmv_shrink(x, a, y, batch, n_slices)
        assert sum(len(k.launches) for k in compiled[kernel]) == 2
    assert len(shrink_module._PLANS) == 1


def test_a_plan_whose_launch_fails_is_not_kept():
    call = _shrink_call()
    shrink_module._PLANS.clear()
    failing = mock.Mock(launch_planned=mock.Mock(side_effect=RuntimeError("no kernel")))
    with mock.patch.object(shrink_module, "_sgmv_shrink_kernel", failing), pytest.raises(RuntimeError):
        sgmv_shrink(*call, S)
    assert len(shrink_module._PLANS) == 0


def test_a_plan_keeps_each_kernel_s_launcher_apart():
    """One plan, two kernels launched from it (a test or bench swapping a module's kernel): each
    launch runs its own kernel's launcher."""
    first, second = _jit(), _jit()
    call = _shrink_call()
    shrink_module._PLANS.clear()
    with stubbed_triton(first, second) as compiled:
        for kernel in (first, second):
            with mock.patch.object(shrink_module, "_sgmv_shrink_kernel", FastLaunch(kernel)):
                for _ in range(3):
                    sgmv_shrink(*call, S)
        assert [sum(len(k.launches) for k in compiled[kernel]) for kernel in (first, second)] == [3, 3]
