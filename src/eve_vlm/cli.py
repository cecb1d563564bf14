"""The `eve` command.

Every subcommand is one function in `COMMANDS`: it receives the top-level subparsers, adds its
parser(s) and sets `handler` (a function of the parsed args) with `set_defaults`. Handlers stay
thin: they import the library lazily (so `eve --help` loads the model package, which registers
the architecture with transformers' Auto classes, but not the training, serving or eval stacks) and
call one function.
An `EveError` (bad input) becomes a one-line message on stderr and exit status 2, like argparse's
own usage errors; anything else is a bug and keeps its traceback.
"""

import argparse
import sys

from . import __version__
from .dtypes import DTYPES
from .errors import EveError


def _convert_official(args):
    from .convert.official import official_to_eve

    official_to_eve(args.src, args.dst, image_token_id=args.image_token_id, dtype=args.dtype)
    print(f"wrote {args.dst}")


def _convert_to_official(args):
    from .convert.official import eve_to_official

    eve_to_official(args.src, args.dst)
    print(f"wrote {args.dst}")


def add_convert(commands):
    convert = commands.add_parser("convert", help="convert checkpoints between formats")
    kinds = convert.add_subparsers(dest="kind", required=True, metavar="KIND")
    official = kinds.add_parser("official", help="official EVEv2 checkpoint folder -> eve-vlm folder")
    official.add_argument("src", help="official checkpoint folder (config.json, safetensors, tokenizer)")
    official.add_argument("dst", help="new or empty output folder")
    official.add_argument(
        "--image-token-id", type=int, help="placeholder id (default: <|image_pad|> from the tokenizer files)"
    )
    official.add_argument("--dtype", choices=DTYPES, help="cast floating-point weights")
    official.set_defaults(handler=_convert_official)
    back = kinds.add_parser("to-official", help="eve-vlm folder -> official EVEv2 layout")
    back.add_argument("src", help="eve-vlm checkpoint folder")
    back.add_argument("dst", help="new or empty output folder")
    back.set_defaults(handler=_convert_to_official)


def add_train(commands):
    from .train.cli import add_train_commands

    add_train_commands(commands)


def add_infer(commands):
    from .infer.cli import add_infer_commands

    add_infer_commands(commands)


def add_eval(commands):
    from .eval.cli import add_eval_commands

    add_eval_commands(commands)


def add_caption(commands):
    from .caption.cli import add_caption_commands

    add_caption_commands(commands)


COMMANDS = [add_convert, add_train, add_infer, add_eval, add_caption]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eve", description="eve-vlm: encoder-free vision-language models")
    parser.add_argument("--version", action="version", version=f"eve-vlm {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except EveError as e:
        print("eve: error: " + " ".join(str(e).splitlines()), file=sys.stderr)
        return 2
    return 0
