"""The ``mint`` command line.

Each command group lives beside the code it drives and contributes itself with
``add_commands(subparsers)``; handlers import their heavy dependencies lazily,
so ``mint --help`` answers at once.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from sglang_mint.errors import MintError, no_room

# (module, group name). A group module defines add_commands(subparsers).
COMMAND_GROUPS = [
    ("sglang_mint.dev.cli", "dev"),  # also `mint demo`
    ("sglang_mint.catalog.cli", "catalog"),
    ("sglang_mint.packed.cli", "pack"),
    ("sglang_mint.usage.cli", "usage"),
    ("sglang_mint.capacity.cli", "plan"),
    ("sglang_mint.gateway.cli", "gateway"),
]


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser that refuses arguments it does not know itself, with its own usage line.

    argparse hands a sub-command's unknown arguments up to the top parser, which printed
    ``usage: mint [-h] COMMAND ...`` for ``mint catalog import CAT --from-dirr DIR``: no word of
    import's options. Every sub-parser is made of the class of the parser above it
    (``add_subparsers``' default ``parser_class``), so at any depth the parser that got the
    arguments says ``usage: mint catalog import ...`` and ``unrecognized arguments: --from-dirr DIR``
    (exit 2)."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog="mint",
        description="sglang-mint: serve a catalog of LoRA adapters on one SGLang base model.",
    )
    sub = parser.add_subparsers(dest="group", metavar="COMMAND")
    sub.required = True
    for module_name, _ in COMMAND_GROUPS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            continue
        module.add_commands(sub)
    return parser


def _command_name(parser: argparse.ArgumentParser, argv: list[str]) -> str:
    """The command ``argv`` runs, its subcommands and none of their arguments: "mint catalog publish" for
    ``catalog publish CAT acme/bot FOLDER``, "mint pack" for ``pack SRC DST``."""
    words = ["mint"]
    for word in argv:
        subcommands = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if subcommands is None or word not in subcommands.choices:
            break
        words.append(word)
        parser = subcommands.choices[word]
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MintError as exc:
        print(f"mint: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write that found the disk full: said as such, not a traceback
        refused = no_room(exc, _command_name(parser, sys.argv[1:] if argv is None else argv))
        if refused is None:
            raise
        print(f"mint: error: {refused}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
