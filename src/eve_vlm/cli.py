"""The `eve` command: one thin layer over the packages' own CLIs.

Each package in `PACKAGES` has a `cli.py` whose `add_commands(subparsers)` adds its subcommands
and sets `handler` (a function of the parsed args). CLI modules import nothing heavy at module
level, handlers import the library when they run: `eve --help` stays well under a second.
An `EveError` (bad input) becomes a one-line message on stderr and exit status 2, like argparse's
own usage errors; anything else is a bug and keeps its traceback.
"""

import argparse
import importlib
import sys

from . import __version__
from .errors import EveError

PACKAGES = ("convert", "train", "infer", "serve", "eval", "caption")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="eve-vlm: encoder-free vision-language models")
    parser.add_argument("--version", action="version", version=f"eve-vlm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for package in PACKAGES:
        importlib.import_module(f"{__package__}.{package}.cli").add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except EveError as e:
        print("eve: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    return 0
