"""The `eve chat`, `eve infer`, `eve serve` and `eve web` subcommands (wired in by eve_vlm.cli)."""

import os
import sys

from ..extras import needs


def _model_args(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="folder with a saved model and EveProcessor")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), help="weights dtype (default: fp32)")
    p.add_argument("--device", help="e.g. cpu, cuda, cuda:1 (default: cuda when available)")


def _generation_args(p, max_new_tokens: int = 256) -> None:
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    p.add_argument("--seed", type=int)


def _options(args):
    from .engine import GenerationOptions

    return GenerationOptions(args.max_new_tokens, args.temperature, args.top_p, args.repetition_penalty,
                             tuple(args.stop), args.seed)


def _load(args):
    from .engine import load

    return load(args.model, args.dtype, args.device)


def _chat(args) -> None:
    from .chat import Chat, interactive

    options = _options(args)
    chat = Chat(*_load(args), options)
    for path in args.image:
        chat.attach(path)
    if args.prompt is not None:
        chat.ask(args.prompt)
    else:
        interactive(chat)


def _infer(args) -> None:
    from .batch import run

    options = _options(args)
    if not os.path.isfile(args.input):
        from ..errors import EveError

        raise EveError(f"{args.input}: no such file")
    counts = run(*_load(args), args.input, args.output, options, args.batch_size, args.max_batch_tokens)
    print(f"{counts['answered']} answered, {counts['errors']} errors, {counts['skipped']} already answered "
          f"-> {args.output}", file=sys.stderr)


def _serve(args) -> None:
    from ..serve import Limits, create_app

    with needs("serve", "eve serve"):
        import uvicorn

    key = args.api_key or os.environ.get("EVE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"eve: warning: serving on {args.host} without an API key", file=sys.stderr)
    model, processor = _load(args)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                    max_image_pixels=args.max_image_pixels, max_images=args.max_images,
                    max_prompt_tokens=args.max_prompt_tokens)
    hosts = [h for h in (args.allow_remote_images or "").split(",") if h.strip()]
    app = create_app(model, processor, args.served_model_name or os.path.basename(os.path.abspath(args.model)), key,
                     args.max_batch_size, args.max_queue, limits, hosts)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _web(args) -> None:
    from ..serve.web import gradio, launch

    gradio()  # a missing extra fails before the model loads
    launch(*_load(args), _options(args), args.host, args.port)


def add_infer_commands(subparsers) -> None:
    chat = subparsers.add_parser("chat", help="chat with a model in the terminal (streamed)")
    _model_args(chat)
    _generation_args(chat)
    chat.add_argument("--image", action="append", default=[], metavar="PATH", help="image for the first message")
    chat.add_argument("prompt", nargs="?", help="answer this one prompt and exit (default: interactive session)")
    chat.set_defaults(handler=_chat)

    infer = subparsers.add_parser("infer", help="batch inference: JSONL requests -> JSONL answers (resumable)")
    _model_args(infer)
    _generation_args(infer)
    infer.add_argument("--input", required=True, metavar="JSONL", help='records {"id", "messages"} or {"id", '
                       '"prompt", "images"}')
    infer.add_argument("--output", required=True, metavar="JSONL",
                       help="answers are appended; ids answered already are skipped")
    infer.add_argument("--batch-size", type=int, default=8)
    infer.add_argument("--max-batch-tokens", type=int, metavar="T", help="cap on batch size x longest prompt")
    infer.set_defaults(handler=_infer)

    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with dynamic batching")
    _model_args(serve)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (default: $EVE_API_KEY)")
    serve.add_argument("--served-model-name", help="the model id clients send (default: the folder's name)")
    serve.add_argument("--max-batch-size", type=int, default=8)
    serve.add_argument("--max-queue", type=int, default=64, help="waiting requests past this get 429")
    serve.add_argument("--allow-remote-images", metavar="HOST,...", help="hosts whose http(s) image URLs are fetched")
    serve.add_argument("--max-body-mb", type=float, default=20)
    serve.add_argument("--max-image-mb", type=float, default=10)
    serve.add_argument("--max-image-pixels", type=int, default=40_000_000)
    serve.add_argument("--max-images", type=int, default=8, help="per request")
    serve.add_argument("--max-prompt-tokens", type=int, help="default: the model's context length")
    serve.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    serve.set_defaults(handler=_serve)

    web = subparsers.add_parser("web", help="Gradio chat page with image upload")
    _model_args(web)
    _generation_args(web, max_new_tokens=512)
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=7860)
    web.set_defaults(handler=_web)
