"""Kernel tests: Triton kernels against their torch references.

On a CPU machine the kernels run under the Triton interpreter, which must be
switched on before anything imports triton (triton.jit reads it when a kernel
is decorated): tests/conftest.py does that first thing, before any test module
is collected. Set MINT_KERNEL_TESTS_ON_GPU=1 on a GPU machine to run the `gpu`
tests on real kernels instead (the interpreter tests then skip).
"""

import os

import pytest
import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "gpu: needs a CUDA device and real (not interpreted) Triton kernels")
    config.addinivalue_line(
        "markers", "interp: runs Triton kernels on CPU under TRITON_INTERPRET=1")


def pytest_collection_modifyitems(config, items):
    gpu_ok = torch.cuda.is_available() and not INTERPRET
    skip_gpu = pytest.mark.skip(
        reason="needs CUDA and MINT_KERNEL_TESTS_ON_GPU=1 (no interpreter)")
    skip_interp = pytest.mark.skip(reason="TRITON_INTERPRET is off (GPU run)")
    for item in items:
        if "gpu" in item.keywords and not gpu_ok:
            item.add_marker(skip_gpu)
        if "interp" in item.keywords and not INTERPRET:
            item.add_marker(skip_interp)
