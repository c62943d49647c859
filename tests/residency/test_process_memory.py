"""The scheduler's memory figures: ``pss_data_bytes`` stays put while other processes map the
same files, and ``pss_bytes`` does not.

CI ran the server lane beside the fast lane's workers, all importing torch. The per-expert MoE
host-budget test compared the scheduler's PSS growth with its host bytes and failed at +21% on a
run where the only difference was how many other processes shared torch's pages. Here a file of
this test's own stands in for torch's libraries, so the number of sharers is known: every other
process on the machine may map torch, but only this test's children map this file.
"""

from __future__ import annotations

import mmap
import os
import subprocess
import sys
from pathlib import Path

import torch
from hung import HUNG_AFTER_S

from sglang_mint.residency.host_bytes import proportional_sizes

SHARERS = 3
MIB = 1 << 20
FILE_BYTES = 64 * MIB
# Each child maps the file and reads one byte of every page, so that its pages count for it too.
SHARER = ("import mmap, sys\n"
          "f = open(sys.argv[1], 'rb'); m = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
          "sum(m[i] for i in range(0, len(m), 4096)); print('up', flush=True); sys.stdin.read()\n")


def sizes() -> tuple[int, int]:
    s = proportional_sizes()
    return s["pss_bytes"], s["pss_data_bytes"]


def mapping_pss(path: Path) -> int:
    """This process's PSS of its mapping of ``path`` (its part of ``pss_bytes``), from /proc/self/smaps."""
    total, inside = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if not line.split(maxsplit=1)[0].endswith(":"):  # a mapping's header: "start-end perms ... path"
            inside = line.endswith(str(path))
        elif inside and line.startswith("Pss:"):
            total += int(line.split()[1]) * 1024
    return total


def test_data_size_ignores_files_that_other_processes_map():
    # Beside the tests, on the checkout's disk: a file in /dev/shm (or a /tmp on tmpfs) would be
    # shared memory, which pss_data_bytes counts on purpose (node-shared adapters are held there).
    path = Path(__file__).with_name(f".mapped-by-test-{os.getpid()}")
    sharers = []
    try:
        path.write_bytes(os.urandom(FILE_BYTES))
        with open(path, "rb") as f:
            mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        sum(mapping[i] for i in range(0, FILE_BYTES, 4096))  # every page mapped into this process
        alone, alone_file = sizes(), mapping_pss(path)
        sharers = [subprocess.Popen([sys.executable, "-c", SHARER, str(path)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, text=True) for _ in range(SHARERS)]
        assert all(p.stdout.readline() == "up\n" for p in sharers)
        shared, shared_file = sizes(), mapping_pss(path)
    finally:
        for p in sharers:
            p.stdin.close()
            p.wait(timeout=HUNG_AFTER_S)
        path.unlink(missing_ok=True)
    # Four sharers of the file's 64 MiB: this process's PSS of it drops by three quarters ... (measured on
    # the file's mapping: the whole pss_bytes also moves as servers beside this test start and stop and
    # so share torch's pages with more or fewer processes, by 10 MiB in one run)
    assert alone_file - shared_file > 40 * MIB, (alone_file, shared_file, alone, shared)
    # ... while its data, its own heap and tensors, does not move.
    assert abs(alone[1] - shared[1]) < 4 * MIB, (alone, shared)
    mapping.close()


def test_data_size_counts_what_this_process_holds():
    before = sizes()[1]
    held = torch.ones(64 * MIB // 4)  # 64 MiB, every page written
    grown = sizes()[1] - before
    assert 60 * MIB < grown < 68 * MIB, grown
    del held


def test_another_process_is_read_by_its_pid():
    """The frontend reads its schedulers' sizes from outside, by pid."""
    holder = subprocess.Popen([sys.executable, "-c", "b = bytearray(64 << 20); print('up', flush=True); input()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "up\n"
        held = proportional_sizes(holder.pid)
        assert held["pss_data_bytes"] > 64 * MIB and held["pss_bytes"] >= held["pss_data_bytes"], held
    finally:
        holder.stdin.close()
        holder.wait(timeout=HUNG_AFTER_S)
    assert proportional_sizes(holder.pid) == {"pss_bytes": None, "pss_data_bytes": None}  # gone
