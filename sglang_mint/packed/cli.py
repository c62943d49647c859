"""``mint pack SRC DST``: a PEFT folder -> a packed folder (adapter_config.json + adapter.mintpack)."""

from __future__ import annotations

import argparse


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("pack", help="convert a PEFT LoRA folder into a packed folder (or back with --unpack)")
    p.add_argument("src", help="PEFT folder (or, with --unpack, a packed folder or .mintpack file)")
    p.add_argument("dst", help="output folder")
    p.add_argument("--base", help="base model folder: records its identity, checks expert counts")
    p.add_argument("--unpack", action="store_true",
                   help="write the PEFT folder back, bit-exact (an adapter with per-module scalings: its uniform form)")
    p.set_defaults(func=_pack)


def _pack(args) -> int:
    import os

    from sglang_mint.packed.convert import pack_folder, unpack_folder
    from sglang_mint.packed.reader import read_header

    if args.unpack:
        print(f"unpacked to {unpack_folder(args.src, args.dst)}")
        return 0
    out = pack_folder(args.src, args.dst, base_dir=args.base)
    _, entries, mint, size = read_header(out)
    print(f"{out}  {size} bytes  {len(entries)} tensors  rank={mint['rank']} dtype={mint['dtype']}")
    return 0 if os.path.isfile(out) else 1
