"""Easy-VQA fine-tune of the demo's stage-2.1 model at one small budget: full fine-tuning vs LoRA on
the vision copies vs LoRA on every decoder linear layer. Per variant: trainable parameters, training
time, the held-out loss before and after, easy-VQA accuracy and the change of the text perplexity.

All three run `recipes/lora-easyvqa/vision.yaml` with the same data, steps, batch and seed, one
after the other in this process:

  full         train.lora=null, train.groups=[pel, vision, llm], lr 1e-4 (the demo's stage 3)
  lora-vision  the recipe as it is: r=16 adapters on the `vision_*` linears, the PEL trained fully
  lora-all     train.lora.target=all: adapters on the text path too

Selection data: the last --held-out training images are kept out of training; their loss is the
recipe's held-out evaluation (logged before step 1 and at the end). The test split is only for the
final report: the demo's scorer (`eve_vlm.demo.evaluate`, task easyvqa-question-only: the question
alone, exact match) on its first --limit questions. Text perplexity: `eve_vlm.eval.perplexity` on
held-out English (the Python help pages), the merged model vs the stage-2.1 model; LoRA on the vision
copies cannot move it (a text-only forward never runs them), so it must read +0.0 %.

    python benchmarks/lora_easyvqa.py --model demo-out/runs/stage2.1/model --data demo-out/data \
        --out outputs/lora-easyvqa
"""

import argparse
import datetime
import json
import os
import time
from pathlib import Path

import torch
from machine import machine, report

HERE = Path(__file__).resolve().parent
RECIPE = HERE.parent / "recipes" / "lora-easyvqa" / "vision.yaml"
VARIANTS = {"full": ["train.lora=null", "train.groups=[pel, vision, llm]", "train.lr=1e-4"],
            "lora-vision": [],
            "lora-all": ["train.lora.target=all"]}
TASK = "easyvqa-question-only"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] load {os.getloadavg()[0]:.1f}: {msg}", flush=True)


def split_records(data_dir: Path, out: Path, held_out: int) -> tuple[Path, Path]:
    """train_qa.jsonl -> (all but the last `held_out` records, those last ones)."""
    lines = (data_dir / "train_qa.jsonl").read_text().splitlines(keepends=True)
    train, val = out / "train_qa.jsonl", out / "val_qa.jsonl"
    train.write_text("".join(lines[:-held_out]))
    val.write_text("".join(lines[-held_out:]))
    return train, val


def fine_tune(name: str, args, train: Path, val: Path) -> dict:
    from eve_vlm.train import load_recipe, train_or_reuse

    images = args.data / "train" / "images"
    recipe = load_recipe(str(RECIPE), [
        f"model.source={args.model}",
        f"data.sources=[{{path: {train}, image_root: {images}}}]",
        f"eval.sources=[{{path: {val}, image_root: {images}}}]", f"eval.max_samples={args.held_out}",
        f"train.steps={args.steps}", f"train.global_batch={args.batch}", f"train.micro_batch={args.batch}",
        # fp32 for all: `bf16: auto` measures the machine, and under a shared load it chose differently
        # from one run to the next
        "train.bf16=false", "train.progress=false", "checkpoint.every=null", f"output.dir={args.out / name}",
        *VARIANTS[name]])
    return train_or_reuse(recipe)


def held_out_losses(run_dir: str) -> tuple[float, float]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        losses = [r["eval_loss"] for r in map(json.loads, f) if "eval_loss" in r]
    return losses[0], losses[-1]


def accuracy(model_dir: str, out: Path, args) -> float:
    from eve_vlm.demo import evaluate

    out.mkdir(parents=True, exist_ok=True)
    shared = args.out / "test-data"  # the exported test split, once for every model
    shared.mkdir(exist_ok=True)
    if not (out / "data").exists():
        (out / "data").symlink_to(shared.resolve())
    return evaluate(model_dir, TASK, str(out), args.limit, args.eval_batch)["metrics"]["exact_match"]


def perplexity(model_dir: str) -> float:
    from transformers import AutoModelForImageTextToText

    from eve_vlm.eval.perplexity import heldout_english, perplexity, text_chunks
    from eve_vlm.processing import EveProcessor

    chunks = text_chunks(EveProcessor.from_pretrained(model_dir).tokenizer, heldout_english(), num_chunks=16)
    return perplexity(AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32), chunks)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, required=True, help="the stage-2.1 model folder")
    p.add_argument("--data", type=Path, required=True, help="the demo's data folder (train_qa.jsonl, train/images)")
    p.add_argument("--out", type=Path, required=True, help="runs and evaluations go here")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=4, help="images per step (~10 questions each)")
    p.add_argument("--held-out", type=int, default=16, help="training images kept out for the held-out loss")
    p.add_argument("--limit", type=int, default=300, help="test questions scored")
    p.add_argument("--eval-batch", type=int, default=32)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start, loads = time.perf_counter(), [os.getloadavg()[0]]
    train, val = split_records(args.data, args.out, args.held_out)

    log("stage-2.1 model: accuracy and text perplexity ...")
    base_acc, base_ppl = accuracy(str(args.model), args.out / "eval" / "stage2.1", args), perplexity(str(args.model))
    rows = [f"| stage-2.1 model (no fine-tune) | - | - | - | {100 * base_acc:.1f} % | {base_ppl:.3f} |"]
    for name in args.variants:
        log(f"{name}: training ...")
        s = fine_tune(name, args, train, val)
        loads.append(os.getloadavg()[0])
        log(f"{name}: trained in {s['wall_s']:.0f} s; evaluating ...")
        acc, ppl = accuracy(s["model_dir"], args.out / "eval" / name, args), perplexity(s["model_dir"])
        before, after = held_out_losses(s["run_dir"])
        trainable = sum(g["trainable"] for g in s["parameters"].values())
        same = " (bit-identical)" if ppl == base_ppl else ""
        rows.append(f"| {name} | {trainable / 1e6:,.2f} M | {s['wall_s'] / 60:.1f} min | {before:.3f} → "
                    f"{after:.3f} | {100 * acc:.1f} % | {ppl:.3f} ({100 * (ppl / base_ppl - 1):+.1f} %{same}) |")
        log(f"{name}: {rows[-1]}")
    lines = [
        f"## lora_easyvqa.py — {datetime.date.today()}", "",
        f"Machine: {machine()}; load average (1 min) at the start and after each fine-tune: "
        f"{', '.join(f'{x:.1f}' for x in loads)} (a shared 2-core machine: other jobs ran at the same time, so "
        "the training times are indicative). The demo's stage-2.1 model (SmolLM2-135M upcycled, all vision "
        f"copies) fine-tuned by `recipes/lora-easyvqa/vision.yaml`: {args.steps} steps x {args.batch} easy-VQA "
        "training images (every question of an image its own row, `turns: independent`), 128² images, seed 3, "
        "fp32; full: lr 1e-4 (PEL 2e-4); LoRA: r=16, alpha=32, dropout 0.05, lr 5e-4, "
        "the PEL trained fully (2e-4). No hyperparameter was tuned on the test split. Held-out loss: the "
        f"last {args.held_out} training images' questions (kept out of training), before step 1 → after the last. "
        f"Accuracy: the demo's scorer (task {TASK}, exact match) on the first {args.limit} easy-VQA test "
        "questions. Text perplexity: 16 x 256 tokens of held-out English (`eve_vlm.eval.perplexity`), the "
        "merged `model/` folder vs the stage-2.1 model.", "",
        "| variant | trainable parameters | training time | held-out loss | easy-VQA accuracy | text perplexity |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
        *rows, "",
        f"Whole benchmark: {(time.perf_counter() - start) / 60:.0f} min.", "",
    ]
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
