"""The paper's ablation on easy-VQA: which weights get a vision copy, at the same training budget.

    python benchmarks/ablate_decoupling.py                     # ~1 h on 2 CPU cores; appends to RESULTS.md
    python benchmarks/ablate_decoupling.py --stage1 runs/easyvqa-smollm2/stage1/model --steps 40

All variants start from one stage-1 model (SmolLM2-135M-Instruct upcycled, PEL trained on captions,
LLM untouched) and then train the same steps, on the same question batches in the same order, with
the same learning rates, as in paper Fig. 5 (stage 2: PEL + the vision weights, LLM frozen):

- `none`   (EVEv1-like): no vision copies; the shared LLM weights are the "vision weights" and train;
- `ffn`    (EVEv1.5 / Mono-InternVL): a vision copy of the FFN only, trained; the LLM frozen;
- `all`    (EVEv2 DaC): vision copies of attention, norms and FFN, trained; the LLM frozen.

Reported: easy-VQA test exact match (the first --eval-limit questions) per question type, the final
training loss, tokens/s, and the language forgetting: perplexity on held-out English text (the
Python help pages' prose, text tokens only) before and after. A PNG of the loss curves goes next
to this script.
"""

import argparse
import datetime
import os
import sys
from pathlib import Path

from machine import machine
from eve_vlm.data.easyvqa import export_easyvqa
from eve_vlm.eval.perplexity import heldout_english, perplexity, text_chunks
from eve_vlm.infer.predictors import DirectPredictor
from eve_vlm.eval.runner import evaluate, write_results
from eve_vlm.eval.tasks import Task
from eve_vlm.infer.engine import load
from eve_vlm.train import train_or_reuse
from eve_vlm.train.metrics import read_metrics, train_records
from eve_vlm.train.recipe import Recipe, validate

HERE = Path(__file__).resolve().parent
VARIANTS = {  # name -> (decoupled, trainable groups)
    "none": ([], ["pel", "llm"]),
    "ffn": (["ffn"], ["pel", "vision"]),
    "all": (["attention", "norm", "ffn"], ["pel", "vision"]),
}
DESCRIPTION = {"none": "none (EVEv1: shared weights)", "ffn": "ffn (EVEv1.5 / Mono-InternVL)",
               "all": "all (EVEv2 DaC)"}


def data_recipe(data_dir: str, split_file: str, template: str) -> dict:
    return {"sources": [{"path": os.path.join(data_dir, split_file),
                         "image_root": os.path.join(data_dir, "train", "images")}],
            "template": template, "max_size": 128, "resize_mode": "inference", "max_length": 512}


def stage1_recipe(args) -> Recipe:
    return validate({
        "model": {"source": "smollm2", "decoupled": []},
        "data": data_recipe(args.data, "train_captions.jsonl", "plain"),
        "train": {"groups": ["pel"], "lr": 2e-3, "steps": args.stage1_steps, "global_batch": 32, "micro_batch": 16,
                  "warmup_ratio": 0.03, "bf16": False, "seed": args.seed},
        "checkpoint": {"every": None},
        "output": {"dir": os.path.join(args.out, "stage1"), "tensorboard": False},
    })


def variant_recipe(args, name: str) -> Recipe:
    decoupled, groups = VARIANTS[name]
    return validate({
        "model": {"source": args.stage1, "decoupled": decoupled, "init_vision": bool(decoupled)},
        "data": data_recipe(args.data, "train_qa.jsonl", "eve"),
        "train": {"groups": groups, "lr": args.lr, "pel_lr": args.pel_lr, "steps": args.steps,
                  "global_batch": args.global_batch, "micro_batch": args.micro_batch, "warmup_ratio": 0.1,
                  "bf16": False, "seed": args.seed},
        "checkpoint": {"every": 10, "keep": 1},
        "output": {"dir": os.path.join(args.out, name), "tensorboard": False},
    })


def text_perplexity(model_dir: str, chunks_cache: dict) -> float:
    model, processor = load(model_dir, device="cpu")
    if "chunks" not in chunks_cache:
        chunks_cache["chunks"] = text_chunks(processor.tokenizer, heldout_english())
    return perplexity(model, chunks_cache["chunks"])


def accuracy(model_dir: str, out_dir: str, limit: int) -> dict:
    results = evaluate(Task.load("easyvqa"), DirectPredictor(model_dir, device="cpu"), out_dir, limit=limit,
                       batch_size=32)
    write_results(results, out_dir)
    return results


def plot(curves: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, records in curves.items():
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label=DESCRIPTION[name])
    ax.set_xlabel("optimizer step (same question batches for every variant)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("easy-VQA, SmolLM2-135M upcycled: which weights get a vision copy")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/ablation", help="runs and evaluations go here (resumable)")
    p.add_argument("--data", default="data/easyvqa", help="easy-VQA export (made here when missing)")
    p.add_argument("--stage1", default=None, help="a stage-1 model folder to start from (default: train one)")
    p.add_argument("--stage1-steps", type=int, default=150)
    p.add_argument("--variants", default="none,ffn,all")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--pel-lr", type=float, default=5e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-limit", type=int, default=1000, help="test questions scored (the split has 9,673)")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--plot", type=Path, default=HERE / "ablation-loss.png")
    args = p.parse_args()
    names = args.variants.split(",")
    if unknown := set(names) - set(VARIANTS):
        sys.exit(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")

    if not os.path.exists(os.path.join(args.data, "train_qa.jsonl")):
        export_easyvqa(args.data)
    if args.stage1 is None:
        args.stage1 = train_or_reuse(stage1_recipe(args))["model_dir"]
    cache = {}
    base_ppl = text_perplexity(args.stage1, cache)
    print(f"stage-1 model {args.stage1}: held-out English perplexity {base_ppl:.3f}", flush=True)

    rows, curves = [], {}
    for name in names:
        summary = train_or_reuse(variant_recipe(args, name))
        curves[name] = train_records(read_metrics(summary["run_dir"]))
        results = accuracy(summary["model_dir"], os.path.join(summary["run_dir"], "eval"), args.eval_limit)
        ppl = text_perplexity(summary["model_dir"], cache)
        rates = [r["tokens_per_s"] for r in curves[name][1:]]
        rows.append({"name": name, "results": results, "ppl": ppl, "summary": summary,
                     "tok_s": sorted(rates)[len(rates) // 2] if rates else float("nan")})
        print(f"{name}: exact match {100 * results['metrics']['exact_match']:.1f} %, perplexity {ppl:.3f}", flush=True)

    types = sorted({g for r in rows for g in r["results"]["by_group"]})
    n_q = rows[0]["results"]["metrics"]["count"]
    lines = [
        f"## ablate_decoupling.py — {datetime.date.today()}", "",
        f"Machine: {machine()}. SmolLM2-135M-Instruct upcycled; one stage-1 model (PEL on captions, LLM "
        f"untouched), then per variant {args.steps} steps x {args.global_batch} easy-VQA training records (all "
        f"~10 questions of an image per record; same batches, same order), lr {args.lr:g}, PEL lr {args.pel_lr:g}, "
        f"10 % warm-up, cosine, fp32. Exact match on the first {n_q} test questions; perplexity of held-out "
        f"English (Python help pages' prose, {' x '.join(map(str, cache['chunks'].shape))} tokens, no image) "
        f"before: {base_ppl:.3f}.", "",
        "| decoupled | trains | test exact match | " + " | ".join(types) +
        " | final loss | perplexity after | forgetting | tokens/s |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in types) + " | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        groups = "+".join(VARIANTS[r["name"]][1])
        per_type = " | ".join(f"{100 * r['results']['by_group'][t]['exact_match']:.1f}" for t in types)
        lines.append(
            f"| {DESCRIPTION[r['name']]} | {groups} | {100 * r['results']['metrics']['exact_match']:.1f} % | "
            f"{per_type} | {r['summary']['final_loss']:.3f} | {r['ppl']:.3f} | {r['ppl'] / base_ppl - 1:+.1%} | "
            f"{r['tok_s']:,.0f} |")
    lines += ["", f"Loss curves: `benchmarks/{args.plot.name}`.", ""]
    print("\n".join(lines))
    if not args.no_write:
        plot(curves, args.plot)
        with open(args.results, "a") as f:
            f.write("\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
