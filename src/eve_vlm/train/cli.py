"""`eve train`, `eve init-vision`, `eve export` and `eve plot`; the lead's cli.py adds them with
`add_commands(subparsers)`. Handlers import the library lazily so `eve --help` stays fast."""

import os
import signal

from ..model.variants import DECOUPLABLE


def _train(args):
    from .recipe import load_recipe
    from .trainer import train

    summary = train(load_recipe(args.recipe, args.overrides))
    main = os.environ.get("RANK", "0") == "0"
    if summary["stopped_by"]:
        if main:
            print(f"stopped by {summary['stopped_by']} at step {summary['steps']}/{summary['total_steps']}; "
                  f"continue with: eve train {args.recipe} train.resume=auto")
        raise SystemExit(128 + signal.Signals[summary["stopped_by"]].value)
    if main:
        print(f"done: {summary['steps']} steps, final loss {summary['final_loss']:.4f}, "
              f"model in {summary['model_dir']}")


def _init_vision(args):
    from .build import init_vision_folder

    decoupled = args.decoupled.split(",") if args.decoupled else None
    print(f"wrote {init_vision_folder(args.model_dir, args.out_dir, decoupled)}")


def _export(args):
    from .export import export_checkpoint

    print(f"wrote {export_checkpoint(args.checkpoint, args.out_dir, args.recipe, args.merge, args.adapter_only)}")


def _plot(args):
    from .metrics import plot

    print(f"wrote {plot(args.run_dir, args.out)}")


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train one stage from a recipe (single process or under torchrun)",
        description="Train one stage. Overrides set recipe keys: train.lr=1e-4 data.packing=true "
                    "train.resume=auto. Under torchrun: torchrun --nproc_per_node=N -m eve_vlm.train train RECIPE")
    p.add_argument("recipe", help="recipe YAML (see recipes/)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides, values parsed as YAML")
    p.set_defaults(handler=_train)

    p = subparsers.add_parser(
        "init-vision", help="copy the LLM weights into new vision copies (between stage 1 and stage 2.1)")
    p.add_argument("model_dir", help="eve model folder, e.g. a stage-1 model without vision copies")
    p.add_argument("out_dir", help="output folder")
    p.add_argument("--decoupled", help=f"comma-separated modules to copy: {','.join(DECOUPLABLE)} (default: all)")
    p.set_defaults(handler=_init_vision)

    p = subparsers.add_parser(
        "export", help="training checkpoint -> model folder (evaluate or serve a stage before it ends)")
    p.add_argument("checkpoint", help="RUN/checkpoints/step-N, or a run folder for its latest checkpoint")
    p.add_argument("out_dir", help="new or empty output folder")
    p.add_argument("--recipe", help="the stage's recipe (default: RUN/recipe.yaml, saved by eve train)")
    lora = p.add_mutually_exclusive_group()
    lora.add_argument("--merge", action="store_true",
                      help="LoRA checkpoint: the adapters merged into the base, a plain model folder (the default)")
    lora.add_argument("--adapter-only", action="store_true",
                      help="LoRA checkpoint: only the adapter, in peft's format (PeftModel.from_pretrained on the "
                           "base model folder)")
    p.set_defaults(handler=_export)

    p = subparsers.add_parser("plot", help="loss and learning-rate curves of a run as a PNG")
    p.add_argument("run_dir")
    p.add_argument("--out", help="PNG path (default RUN_DIR/curves.png)")
    p.set_defaults(handler=_plot)
