"""The `eve serve` and `eve web` subcommands (wired in by eve_vlm.cli)."""

import os
import sys

from ..extras import needs
from ..infer.cli import generation_args, generation_options, load_model, model_args


def _serve(args) -> None:
    from .app import Limits, create_app

    with needs("serve", "eve serve"):
        import uvicorn

    key = args.api_key or os.environ.get("EVE_API_KEY")
    if args.host not in ("127.0.0.1", "localhost", "::1") and not key:
        print(f"eve: warning: serving on {args.host} without an API key", file=sys.stderr)
    model, processor = load_model(args)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_image_bytes=int(args.max_image_mb * 2**20),
                    max_image_pixels=args.max_image_pixels, max_images=args.max_images,
                    max_prompt_tokens=args.max_prompt_tokens)
    hosts = [h for h in (args.allow_remote_images or "").split(",") if h.strip()]
    app = create_app(model, processor, args.served_model_name or os.path.basename(os.path.abspath(args.model)), key,
                     args.max_batch_size, args.max_queue, limits, hosts)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


def _web(args) -> None:
    from .web import gradio, launch

    gradio()  # a missing extra fails before the model loads
    launch(*load_model(args), generation_options(args), args.host, args.port)


def add_commands(subparsers) -> None:
    serve = subparsers.add_parser("serve", help="OpenAI-compatible HTTP server with dynamic batching")
    model_args(serve)
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
    model_args(web)
    generation_args(web, max_new_tokens=512)
    web.add_argument("--host", default="127.0.0.1")
    web.add_argument("--port", type=int, default=7860)
    web.set_defaults(handler=_web)
