"""`eve eval`: score a model folder or an OpenAI-compatible endpoint on tasks, or compare runs."""

import argparse
import os

from ..dtypes import DTYPES


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _eval(args):
    from ..errors import EveError
    from .tasks import Task, builtin_tasks

    if args.list_tasks:
        for name in builtin_tasks():
            print(f"{name:<12} {Task.load(name).description}")
        return
    if args.compare:
        from .compare import compare_runs

        out = args.output or os.path.join("evals", "compare")
        print(compare_runs(args.compare, out), end="")
        print(f"wrote {os.path.join(out, 'compare.md')} and compare.png")
        return
    if not args.task:
        raise EveError("give at least one --task (built in: " + ", ".join(builtin_tasks()) + ", or a task file)")
    tasks = [Task.load(t, args.data, args.image_root) for t in args.task]  # all checked before the model loads
    for task in tasks:
        task.max_new_tokens = args.max_new_tokens or task.max_new_tokens
    from .runner import evaluate, summary_markdown

    if args.model:
        from ..infer.predictors import DirectPredictor

        predictor = DirectPredictor(args.model, dtype=args.dtype, device=args.device)
    else:
        from ..infer.predictors import EndpointPredictor

        predictor = EndpointPredictor(args.endpoint, api_key=args.api_key, model=args.endpoint_model)
    # Default folder: the model's name (direct) or the served name + "-endpoint", so the two never collide.
    out = args.output or os.path.join("evals", predictor.name.replace("/", "_") + ("" if args.model else "-endpoint"))
    for task in tasks:
        print(summary_markdown(evaluate(task, predictor, out, limit=args.limit, batch_size=args.batch_size)))
    print(f"wrote {out}")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="score a model (folder or endpoint) on evaluation tasks, or compare runs",
        description="Greedy, resumable evaluation. Results: OUT/TASK.json (every prediction and score), "
                    "OUT/TASK.md (summary); a rerun into the same OUT skips what is done.")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--model", metavar="DIR", help="saved eve-vlm model folder (with its processor)")
    what.add_argument("--endpoint", metavar="URL",
                      help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (eve serve, vLLM, ...)")
    what.add_argument("--compare", nargs="+", metavar="RUN", help="run folders (or TASK.json files) to compare")
    what.add_argument("--list-tasks", action="store_true", help="list the built-in tasks")
    p.add_argument("--task", action="append", metavar="TASK",
                   help="built-in task name or task YAML file; repeat for several")
    p.add_argument("--data", metavar="JSONL", help="records for jsonl-vqa / jsonl-mcq (or any task reading a JSONL)")
    p.add_argument("--image-root", metavar="DIR", help="folder the image paths of --data are relative to "
                                                       "(default: the JSONL's folder)")
    p.add_argument("--limit", type=_positive, metavar="N", help="only the first N records of each task")
    p.add_argument("--batch-size", type=_positive, default=8, metavar="B",
                   help="records decoded together (direct) / requests in flight (endpoint); default 8")
    p.add_argument("--max-new-tokens", type=_positive, metavar="N", help="override the task's reply length cap")
    p.add_argument("--output", metavar="OUT_DIR",
                   help="results folder (default evals/MODEL_NAME[-endpoint], or evals/compare with --compare)")
    p.add_argument("--dtype", choices=DTYPES, help="direct mode: weight dtype (default fp32)")
    p.add_argument("--device", help="direct mode: torch device (default cuda if available)")
    p.add_argument("--api-key", help="endpoint mode: API key (default $OPENAI_API_KEY)")
    p.add_argument("--endpoint-model", metavar="NAME", help="endpoint mode: model name (default: the server's first)")
    p.set_defaults(handler=_eval)
