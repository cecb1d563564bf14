"""`eve caption` (the data engine) and `eve caption-quality` (wired in by eve_vlm.cli)."""

import json
import sys

from ..dtypes import DTYPES
from ..errors import EveError


def expert_specs(names: str, options: list[str]) -> list[tuple[str, dict]]:
    """"layout,ocr,det=pipeline" + ["det.task=object-detection", ...] -> [(spec, options)].
    Option values are YAML scalars (6 -> int, 0.5 -> float, a,b -> the string "a,b")."""
    import yaml

    specs = [s.strip() for s in names.split(",") if s.strip()]
    by_name = {spec.rpartition("=")[0] or spec: {} for spec in specs}
    for option in options:
        key, eq, value = option.partition("=")
        name, dot, field = key.rpartition(".")
        if not (eq and dot and name and field):
            raise EveError(f"--expert-opt {option!r}: want EXPERT.OPTION=VALUE, e.g. ocr.psm=6")
        if name not in by_name:
            raise EveError(f"--expert-opt {option!r}: no expert named {name!r} in --experts {names}")
        by_name[name][field] = yaml.safe_load(value) if value else ""
    return [(spec, by_name[spec.rpartition("=")[0] or spec]) for spec in specs]


def _shard(text: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in text.split("/"))
    except ValueError as exc:
        raise EveError(f"--shard {text!r}: want K/N, e.g. 0/8") from exc
    return k, n


def _caption(args) -> None:
    specs = expert_specs(args.experts, args.expert_opt)
    fuser_opts = dict(prompt=args.prompt, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                      dtype=args.dtype, device=args.device, api_key=args.api_key,
                      endpoint_model=args.endpoint_model, timeout=args.timeout)
    common = dict(batch_size=args.batch_size, workers=args.workers, concurrency=args.concurrency,
                  shard=_shard(args.shard), retry_errors=args.retry_errors, limit=args.limit)
    if args.ray is not None:
        from .ray_mode import run

        counts = run(args.input, args.output, specs, args.fuser, fuser_opts, gpus_per_fuser=args.gpus_per_fuser,
                     address=args.ray or None, **common)
    else:
        from .engine import run
        from .experts import load_expert
        from .fusers import load_fuser

        experts = [load_expert(spec, **opts) for spec, opts in specs]
        counts = run(args.input, args.output, experts, load_fuser(args.fuser, **fuser_opts), **common)
    rate = (counts["captioned"] + counts["errors"]) / counts["seconds"] if counts["seconds"] else 0
    print(f"{counts['captioned']} captioned ({counts['partial']} partial, {counts['fallback']} fell back to the rule "
          f"fuser), {counts['errors']} errors, {counts['skipped']} done before, {counts['duplicates']} duplicate ids; "
          f"{rate:.2f} images/s -> {args.output}", file=sys.stderr)


def _quality(args) -> None:
    from .quality import score

    result = score(args.captions, args.truth)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    recall = "n/a" if result["recall"] is None else f"{result['recall']:.3f}"
    print(f"captions {result['captions']}  fact recall {recall}  hallucination rate "
          f"{result['hallucination_rate']:.3f}  captions with a hallucination {result['hallucinated_captions']}  "
          f"fallbacks {result['fallback']}")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser("caption", help="dense captions from vision experts + a fuser (resumable data engine)")
    p.add_argument("--input", action="append", required=True, metavar="JSONL|DIR|GLOB",
                   help='{"id", "image"} records or a folder of images (repeatable)')
    p.add_argument("--output", required=True, metavar="JSONL",
                   help="LLaVA caption records, appended; ids already there are skipped. Errors go to *.errors.jsonl")
    p.add_argument("--experts", default="layout,ocr", metavar="A,B,...",
                   help="names (layout, ocr, pipeline), module:Class, or alias=spec (default: layout,ocr)")
    p.add_argument("--expert-opt", action="append", default=[], metavar="NAME.KEY=VALUE",
                   help="an expert's option, e.g. ocr.psm=6 or det.model=PATH (repeatable)")
    p.add_argument("--fuser", default="rule", metavar="rule|DIR|URL",
                   help="rule (default), an eve model folder, or an OpenAI-compatible endpoint URL")
    p.add_argument("--prompt", default="fuse-v1", metavar="NAME|FILE", help="fusion prompt template (default fuse-v1)")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--dtype", choices=DTYPES, help="model fuser weights dtype")
    p.add_argument("--device", help="model fuser device (default: cuda when available)")
    p.add_argument("--api-key", help="endpoint key (default: $OPENAI_API_KEY)")
    p.add_argument("--endpoint-model", metavar="NAME", help="model id at the endpoint (default: its first)")
    p.add_argument("--timeout", type=float, default=120, help="seconds per endpoint request")
    p.add_argument("--batch-size", type=int, default=16, help="images per expert batch and per model-fuser batch")
    p.add_argument("--workers", type=int, default=1, help="threads (Ray: actors) running the experts")
    p.add_argument("--concurrency", type=int, default=8,
                   help="endpoint requests in flight (default 8); a model folder runs 1 batch at a time "
                   "(Ray: that many model actors)")
    p.add_argument("--shard", default="0/1", metavar="K/N", help="caption only shard K of N (by id hash)")
    p.add_argument("--retry-errors", action="store_true", help="try again the images in *.errors.jsonl")
    p.add_argument("--limit", type=int, metavar="N", help="stop after N new images")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="run on Ray Data: a cluster address (auto, ray://HOST:10001) or none for local/$RAY_ADDRESS")
    p.add_argument("--gpus-per-fuser", type=float, default=0, help="Ray mode: GPUs per model-fuser actor")
    p.set_defaults(handler=_caption)

    q = subparsers.add_parser("caption-quality", help="fact recall / hallucination rate of captions vs ground truth")
    q.add_argument("captions", help="output of eve caption")
    q.add_argument("--truth", required=True, metavar="JSONL",
                   help="easy-VQA *_captions.jsonl (color, shape) or text-in-image captions.jsonl (text)")
    q.add_argument("--json", action="store_true", help="print all totals as JSON")
    q.set_defaults(handler=_quality)
