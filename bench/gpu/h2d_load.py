"""Question: how long does an adapter take from pinned host memory to the GPU, packed against PEFT?

The same adapter two ways, one JSON row per variant:

    peft_h2d          a PEFT safetensors file loaded, every tensor pinned (untimed), then
                      timed: one .to(cuda, non_blocking) per tensor and a synchronize
    packed_h2d        read_packed(pin=True) (untimed: the data region in one pinned
                      buffer), then timed: one copy of that buffer, the device views built
    peft_file_to_gpu  timed from the file in page cache: load_file, pin, copy per tensor
    packed_file_to_gpu  timed from the file in page cache: read_packed(pin=True), one copy
    pinned_copy       one pinned buffer of the same byte count, copied: the ceiling

Before timing, every tensor copied both ways is compared with its host source
(setup.copies_equal). Adapters: `dense` (Llama-3.1-8B, 32 layers, q/k/v/o/gate/up/down, rank 16, bf16,
about 84 MB, 448 tensors) and `moe` (48 layers x 128 experts x gate/up/down, hidden
256, expert intermediate 128, rank 8, bf16, about 113 MB, 36,864 tensors: the
many-small-tensors case). Times are host wall clock around a synchronize, median
of --repeat. Rows carry bytes and GB/s.

    python bench/gpu/h2d_load.py --out OUT/h2d_load.jsonl [--repeat 3] [--dry-run]

--dry-run (no GPU): tiny adapters, written, packed, read back unpinned, every
variant run once on CPU and compared; nothing touches CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _common import git_commit, machine  # noqa: E402

SHAPES = {
    "dense": dict(layers=32, hidden=4096, inter=14336, kv=1024, experts=0, rank=16),
    "moe": dict(layers=48, hidden=256, inter=128, kv=0, experts=128, rank=8),
}
TINY = {
    "dense": dict(layers=2, hidden=64, inter=96, kv=32, experts=0, rank=4),
    "moe": dict(layers=2, hidden=32, inter=16, kv=0, experts=4, rank=2),
}
VARIANTS = ("peft_h2d", "packed_h2d", "peft_file_to_gpu", "packed_file_to_gpu", "pinned_copy")


def write_peft(folder: Path, s: dict) -> None:
    """A PEFT LoRA folder of random bf16 tensors (fresh, never zeros)."""
    g = torch.Generator().manual_seed(0)
    r, h, i = s["rank"], s["hidden"], s["inter"]
    t = {}

    def lora(name, din, dout):
        t[name + ".lora_A.weight"] = (torch.randn(r, din, generator=g) / din ** 0.5).to(torch.bfloat16)
        t[name + ".lora_B.weight"] = (torch.randn(dout, r, generator=g) / r ** 0.5).to(torch.bfloat16)

    mlp = (("gate_proj", h, i), ("up_proj", h, i), ("down_proj", i, h))
    for layer in range(s["layers"]):
        pre = f"base_model.model.model.layers.{layer}."
        if s["experts"]:
            for e in range(s["experts"]):
                for proj, din, dout in mlp:
                    lora(f"{pre}mlp.experts.{e}.{proj}", din, dout)
            continue
        for proj, dout in (("q_proj", h), ("k_proj", s["kv"]), ("v_proj", s["kv"]), ("o_proj", h)):
            lora(f"{pre}self_attn.{proj}", h, dout)
        for proj, din, dout in mlp:
            lora(f"{pre}mlp.{proj}", din, dout)
    folder.mkdir(parents=True, exist_ok=True)
    save_file(t, str(folder / "adapter_model.safetensors"))
    targets = [p for p, _, _ in mlp] + ([] if s["experts"] else ["q_proj", "k_proj", "v_proj", "o_proj"])
    (folder / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": r, "lora_alpha": 2 * r, "target_modules": targets}))


def median_s(fn, repeat: int, sync) -> float:
    fn()  # warm: allocator, CUDA context, page cache
    sync()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def variants(peft_file: str, packed_file: str, device: torch.device):
    """{variant: callable} on prepared pinned inputs, and the byte count they all move."""
    from sglang_mint.packed import read_packed

    pin = device.type == "cuda"
    host = {k: (v.pin_memory() if pin else v) for k, v in load_file(peft_file).items()}
    packed = read_packed(packed_file, pin=pin)
    nbytes = packed.nbytes
    ceiling = torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    entries = [(name, t.dtype, t.shape, t.data_ptr() - packed.buffer.data_ptr(), t.nbytes)
               for name, t in packed.tensors.items()]

    def peft_h2d(tensors=None):
        return {k: v.to(device, non_blocking=True) for k, v in (tensors or host).items()}

    def packed_h2d(p=None):
        p = p or packed
        buf = p.buffer.to(device, non_blocking=True)
        return {name: buf[o:o + n].view(dt).view(shape) for name, dt, shape, o, n in entries}

    def peft_file_to_gpu():
        return peft_h2d({k: (v.pin_memory() if pin else v) for k, v in load_file(peft_file).items()})

    def packed_file_to_gpu():
        return packed_h2d(read_packed(packed_file, pin=pin))

    def pinned_copy():
        return ceiling.to(device, non_blocking=True)

    def copies_equal() -> bool:
        """Every device tensor equals its host source, bit for bit (the views' offsets included)."""
        dev = packed_h2d()
        same = all(torch.equal(dev[k].cpu(), t) for k, t in packed.tensors.items())
        return same and all(torch.equal(v.cpu(), host[k]) for k, v in peft_h2d().items())

    fns = {"peft_h2d": peft_h2d, "packed_h2d": packed_h2d, "peft_file_to_gpu": peft_file_to_gpu,
           "packed_file_to_gpu": packed_file_to_gpu, "pinned_copy": pinned_copy}
    return fns, copies_equal, nbytes, len(host)


def run(kind: str, s: dict, root: Path, device: torch.device, repeat: int, dry_run: bool) -> list[dict]:
    from sglang_mint.packed import PACKED_FILE
    from sglang_mint.packed.convert import pack_folder

    peft = root / f"{kind}-peft"
    write_peft(peft, s)
    packed = Path(pack_folder(str(peft), str(root / f"{kind}-packed")))
    assert packed.name == PACKED_FILE
    fns, copies_equal, nbytes, n_tensors = variants(str(peft / "adapter_model.safetensors"), str(packed), device)
    setup = {"adapter": kind, "shape": s, "bytes": nbytes, "tensors": n_tensors, "repeat": repeat,
             "copies_equal": copies_equal()}
    if dry_run:  # each variant once, on CPU (.to(cpu) copies nothing): the code paths, not timings
        for fn in fns.values():
            fn()
        return [{"setup": setup, "variant": v, "status": "dry-run", "why": "ran once on CPU; CUDA not touched"}
                for v in fns]
    rows = []
    for name, fn in fns.items():
        sec = median_s(fn, repeat, torch.cuda.synchronize)
        rows.append({"setup": setup, "variant": name, "status": "ok", "seconds": sec,
                     "GB_per_s": nbytes / sec / 1e9})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dry-run", action="store_true")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA device: use --dry-run", file=sys.stderr)
        return 2
    device = torch.device("cpu" if args.dry_run else "cuda")
    stamp = {"machine": machine(), "commit": os.environ.get("MINT_GIT_COMMIT") or git_commit(),
             "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    shapes = TINY if args.dry_run else SHAPES
    with tempfile.TemporaryDirectory(prefix="mint-h2d-") as root, open(args.out, "w") as f:
        for kind, s in shapes.items():
            for row in run(kind, s, Path(root), device, args.repeat, args.dry_run):
                f.write(json.dumps({**row, **stamp}) + "\n")
                gbps = f"{row['GB_per_s']:8.2f} GB/s" if "GB_per_s" in row else row["status"]
                print(f"h2d {kind:>5} {row['variant']:>18} {row['setup']['bytes'] / 1e6:8.1f} MB  {gbps}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
