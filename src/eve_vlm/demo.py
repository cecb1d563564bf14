"""`make demo`: the EVEv2 recipe end to end on a 2-core CPU, offline.

SmolLM2-135M-Instruct is upcycled into an EVE model and trained through the four stages on
easy-VQA (captions for stages 1 / 2.1, questions for 2.2 / 3; recipes in recipes/demo-easyvqa/),
then evaluated on the easy-VQA test split: accuracy per question type, the yes/no questions split
by topic, wording and right answer, a few answers about different images, the same answers drawn
with their images in answers.png, and the loss curves of every stage in loss.png.
"""

import argparse
import os
import time

from rich.columns import Columns
from rich.console import Console
from rich.table import Table

from .extras import pyplot

STAGES = ("stage1", "stage2.1", "stage2.2", "stage3")
PICTURE_EXAMPLES = 16  # answers drawn in answers.png
console = Console(width=110)


def run_stages(recipe_dir: str, out: str, overrides: list[str]) -> list[dict]:
    from .train import completed_summary, load_recipe, train_or_reuse

    summaries = []
    for stage in STAGES:
        recipe = load_recipe(os.path.join(recipe_dir, f"{stage}.yaml"), overrides)
        if completed_summary(recipe.output.dir):
            console.print(f"[bold]{stage}[/]: done earlier, reusing {recipe.output.dir}")
        else:
            console.rule(f"{stage}: training {', '.join(recipe.train.groups)}")
        summaries.append(train_or_reuse(recipe))
    return summaries


def plot_stages(run_dirs: list[str], out_png: str) -> str:
    from .train.metrics import read_metrics, train_records

    plt = pyplot("demo", "the demo's loss plot")
    fig, ax = plt.subplots(figsize=(9, 4))
    offset = 0
    for d in run_dirs:
        records = train_records(read_metrics(d))
        steps = [offset + r["step"] for r in records]
        ax.plot(steps, [r["loss"] for r in records], label=os.path.basename(d))
        offset = steps[-1] if steps else offset
    ax.set_xlabel("optimizer step (stages back to back)")
    ax.set_ylabel("training loss")
    ax.set_yscale("log")
    ax.legend()
    ax.set_title("EVEv2 stages on easy-VQA, SmolLM2-135M upcycled (CPU)")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def evaluate(model_dir: str, task_name: str, out_dir: str, limit: int | None, batch_size: int) -> dict:
    from .infer.predictors import DirectPredictor
    from .eval.runner import evaluate as run_eval
    from .eval.runner import write_results
    from .eval.tasks import Task

    task = Task.load(task_name)
    results = run_eval(task, DirectPredictor(model_dir), out_dir, limit=limit, batch_size=batch_size)
    write_results(results, out_dir)
    return results


def print_results(results: dict, examples: int, picture: str | None = None) -> None:
    """Accuracy per question type next to the yes/no split (eval.yesno), then `examples` answers,
    each about a different image, the question types in turn (eval.answer_grid.pick_examples);
    with `picture`, a PNG of the first PICTURE_EXAMPLES of that same selection."""
    from .eval.answer_grid import is_right, pick_examples, write_answer_grid
    from .eval.yesno import HEADER, yes_no_rows, yes_no_split

    table = Table(title=f"{results['num_records']} test questions, exact match")
    for col in ("question type", "questions", "accuracy"):
        table.add_column(col, justify="left" if col == "question type" else "right")
    table.add_row("all", str(results["metrics"]["count"]), f"{100 * results['metrics']['exact_match']:.1f} %")
    for group, values in results["by_group"].items():
        table.add_row(group, str(values["count"]), f"{100 * values['exact_match']:.1f} %")
    tables = [table]
    split = yes_no_split(results["predictions"])
    if any(cell["count"] for cell in split):
        yes_no = Table(title="yes/no questions: right / asked",
                       caption="high in both columns: the answers follow the image")
        for col in HEADER:
            yes_no.add_column(col, justify="left" if col == HEADER[0] else "right")
        for row in yes_no_rows(split):
            yes_no.add_row(*row)
        tables.append(yes_no)
    console.print(Columns(tables, padding=(0, 3)))
    console.print("baselines that never look at the image: always 'yes' 37.3 %, most common train answer per "
                  "question text 67.0 %")
    shown = pick_examples(results["predictions"], max(examples, PICTURE_EXAMPLES if picture else 0))
    for row in shown[:examples]:
        ok = "[green]right[/]" if is_right(row) else "[red]wrong[/]"
        console.print(f"  {os.path.basename(row['image'])} ({row['group']}): {row['question']!r} -> "
                      f"{row['prediction']!r} (answer {row['answers'][0]!r}, {ok})")
    if picture:
        layout = write_answer_grid(shown[:PICTURE_EXAMPLES], picture, title="easy-VQA test, model's answers")
        console.print(f"{len(layout['cells'])} answers about different images, drawn: {picture}")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="demo-out", help="data, runs and results go here")
    p.add_argument("--recipes", default="recipes/demo-easyvqa")
    p.add_argument("--limit", type=int, default=1000, help="test questions to score (the split has 9,673)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--examples", type=int, default=8)
    p.add_argument("overrides", nargs="*", help="recipe overrides applied to every stage, e.g. train.steps=5")
    args = p.parse_args(argv)
    start = time.time()

    from .data.easyvqa import export_easyvqa

    data_dir = os.path.join(args.out, "data")
    if not os.path.exists(os.path.join(data_dir, "train_qa_open.jsonl")):
        console.print(f"exporting easy-VQA (pip package easy-vqa) to {data_dir} ...")
        export_easyvqa(data_dir, hint="")  # the question alone, as the eval task easyvqa-question-only
    summaries = run_stages(args.recipes, args.out, args.overrides)
    t_train = time.time() - start

    console.rule("evaluation")
    final = summaries[-1]["model_dir"]
    eval_dir = os.path.join(args.out, "eval")
    results = evaluate(final, "easyvqa-question-only", eval_dir, args.limit, args.batch_size)
    print_results(results, args.examples, os.path.join(args.out, "answers.png"))
    png = plot_stages([s["run_dir"] for s in summaries], os.path.join(args.out, "loss.png"))

    stages = Table(title="stages")
    for col in ("stage", "steps", "samples", "final loss", "minutes", "dtype", "GFLOP/s"):
        stages.add_column(col, justify="left" if col in ("stage", "dtype") else "right")
    for stage, s in zip(STAGES, summaries):
        rate = f"{s['gflops_per_s']:.1f}" if "gflops_per_s" in s else "-"
        stages.add_row(stage, str(s["steps"]), str(s["samples"]), f"{s['final_loss']:.3f}", f"{s['wall_s'] / 60:.1f}",
                       s.get("dtype", "-"), rate)
    console.print(stages)
    for stage, s in zip(STAGES, summaries):
        if s.get("dtype_reason"):
            console.print(f"{stage}: {s['dtype']}: {s['dtype_reason']}")
    console.print(f"trained in {t_train / 60:.1f} min, total {(time.time() - start) / 60:.1f} min; "
                  f"model: {final}; loss curves: {png}; predictions: {eval_dir}/{results['task']}.json")


if __name__ == "__main__":
    main()
