"""SGLANG_CPU_OMP_THREADS_BIND, the cores each tensor-parallel rank of a CPU server gets: pure logic."""

from __future__ import annotations

from sglang_mint.process import thread_binding


def test_thread_binding_splits_cores_evenly():
    assert thread_binding(2, [0, 1]) == "0|1"
    assert thread_binding(2, [0, 1, 2, 3]) == "0,1|2,3"
    assert thread_binding(4, [0, 1]) is None
