"""The `eve convert` subcommands (wired in by eve_vlm.cli)."""

from ..dtypes import DTYPES


def _convert_official(args):
    from .official import official_to_eve

    official_to_eve(args.src, args.dst, image_token_id=args.image_token_id, dtype=args.dtype)
    print(f"wrote {args.dst}")


def _convert_to_official(args):
    from .official import eve_to_official

    eve_to_official(args.src, args.dst)
    print(f"wrote {args.dst}")


def add_commands(subparsers) -> None:
    convert = subparsers.add_parser("convert", help="convert checkpoints between formats")
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
