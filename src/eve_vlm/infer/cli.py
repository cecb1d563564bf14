"""The `eve chat` and `eve infer` subcommands (wired in by eve_vlm.cli)."""

import os
import sys

from ..dtypes import DTYPES


def model_args(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="folder with a saved model and EveProcessor")
    p.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: fp32)")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")


def generation_args(p, max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--seed", type=int)


def generation_options(args):
    from .engine import GenerationOptions

    return GenerationOptions(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty,
                             tuple(args.stop), args.seed)


def load_model(args):
    from .engine import load

    return load(args.model, args.dtype, args.device)


def _chat(args) -> None:
    from .chat import Chat, interactive

    options = generation_options(args)
    chat = Chat(*load_model(args), options)
    for path in args.image:
        chat.attach(path)
    if args.prompt is not None:
        chat.ask(args.prompt)
    else:
        interactive(chat)


def _infer(args) -> None:
    from .batch import run

    options = generation_options(args)
    if not os.path.isfile(args.input):
        from ..errors import EveError

        raise EveError(f"{args.input}: no such file")
    counts = run(*load_model(args), args.input, args.output, options, args.batch_size, args.max_batch_tokens)
    print(f"{counts['answered']} answered, {counts['errors']} errors, {counts['skipped']} already answered "
          f"-> {args.output}", file=sys.stderr)


def add_commands(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="chat with a model in the terminal (streamed)")
    model_args(chat)
    generation_args(chat)
    chat.add_argument("--image", action="append", default=[], metavar="PATH", help="image for the first message")
    chat.add_argument("prompt", nargs="?", help="answer this one prompt and exit (default: interactive session)")
    chat.set_defaults(handler=_chat)

    infer = subparsers.add_parser("infer", help="batch inference: JSONL requests -> JSONL answers (resumable)")
    model_args(infer)
    generation_args(infer)
    infer.add_argument("--input", required=True, metavar="JSONL", help='records {"id", "messages"} or {"id", '
                       '"prompt", "images"}')
    infer.add_argument("--output", required=True, metavar="JSONL",
                       help="answers are appended; ids answered already are skipped")
    infer.add_argument("--batch-size", type=int, default=8)
    infer.add_argument("--max-batch-tokens", type=int, metavar="T", help="cap on batch size x longest prompt")
    infer.set_defaults(handler=_infer)
