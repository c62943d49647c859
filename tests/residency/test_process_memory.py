"""The scheduler's memory figures: ``pss_data_bytes`` stays put while other processes map the
same libraries, and ``pss_bytes`` does not.

CI ran the server lane beside the fast lane's workers, all importing torch. The per-expert MoE
host-budget test compared the scheduler's PSS growth with its host bytes and failed at +21% on a
run where the only difference was how many other processes shared torch's pages.
"""

from __future__ import annotations

import subprocess
import sys

import torch

from sglang_mint.residency.host_bytes import proportional_sizes

SHARERS = 3
MIB = 1 << 20


def sizes() -> tuple[int, int]:
    s = proportional_sizes()
    return s["pss_bytes"], s["pss_data_bytes"]


def test_data_size_ignores_libraries_that_other_processes_map():
    alone = sizes()
    sharers = [subprocess.Popen([sys.executable, "-c", "import sys, torch; sys.stdout.write('up\\n'); "
                                 "sys.stdout.flush(); sys.stdin.read()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(SHARERS)]
    try:
        assert all(p.stdout.readline() == "up\n" for p in sharers)
        shared = sizes()
    finally:
        for p in sharers:
            p.stdin.close()
            p.wait(timeout=60)
    # torch's libraries now have four sharers: this process's PSS drops by tens of MiB ...
    assert alone[0] - shared[0] > 20 * MIB, (alone, shared)
    # ... while its data, its own heap and tensors, does not move.
    assert abs(alone[1] - shared[1]) < 4 * MIB, (alone, shared)


def test_data_size_counts_what_this_process_holds():
    before = sizes()[1]
    held = torch.ones(64 * MIB // 4)  # 64 MiB, every page written
    grown = sizes()[1] - before
    assert 60 * MIB < grown < 68 * MIB, grown
    del held
