"""Side-by-side comparison of evaluation runs: a Markdown table (each task's primary metric,
overall and per group, with the change against the first run) and a grouped bar chart."""

import glob
import json
import os

from ..errors import EveError
from ..extras import pyplot


def load_run(path: str) -> dict:
    """A run folder (every TASK.json in it) or one results file -> {task: results}."""
    files = sorted(glob.glob(os.path.join(path, "*.json"))) if os.path.isdir(path) else [path]
    runs = {}
    for file in files:
        try:
            with open(file) as f:
                results = json.load(f)
        except (OSError, ValueError) as exc:
            raise EveError(f"cannot read results {file}: {exc}") from exc
        if isinstance(results, dict) and {"task", "metrics", "primary_metric"} <= set(results):
            runs[results["task"]] = results
    if not runs:
        raise EveError(f"{path}: no evaluation results (TASK.json written by `eve eval`) here")
    return runs


def _label(path: str) -> str:
    path = os.path.normpath(path)
    return os.path.basename(os.path.dirname(path) if os.path.isfile(path) else path)


def compare(paths: list[str]) -> tuple[list[str], list[tuple[str, str, str]], list[list[float | None]]]:
    """(run labels, rows (task, subset, metric), values[row][run] as fractions or None when missing)."""
    labels = [_label(p) for p in paths]
    labels = [f"{x} ({i + 1})" if labels.count(x) > 1 else x for i, x in enumerate(labels)]
    runs = [load_run(p) for p in paths]
    rows, values = [], []
    for task in sorted({t for run in runs for t in run}):
        first = next(run[task] for run in runs if task in run)
        metric = first["primary_metric"]
        subsets = ["all"] + sorted({g for run in runs if task in run for g in run[task]["by_group"]})
        for subset in subsets:
            rows.append((task, subset, metric))
            row = []
            for run in runs:
                res = run.get(task)
                stats = None if res is None else res["metrics"] if subset == "all" else res["by_group"].get(subset)
                row.append(None if stats is None or metric not in stats else stats[metric])
            values.append(row)
    return labels, rows, values


def markdown_table(labels, rows, values) -> str:
    out = ["| task | subset | metric | " + " | ".join(labels) + " |",
           "|---|---|---|" + "---:|" * len(labels)]
    for (task, subset, metric), row in zip(rows, values):
        cells = []
        for i, v in enumerate(row):
            cell = "–" if v is None else f"{100 * v:.1f}"
            if i and v is not None and row[0] is not None:
                cell += f" ({100 * (v - row[0]):+.1f})"
            cells.append(cell)
        out.append(f"| {task} | {subset} | {metric} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def bar_chart(labels, rows, values, path: str) -> None:
    plt = pyplot("eval", "the comparison chart")
    width = 0.8 / len(labels)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(rows) * len(labels) + 2), 4.5))
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(rows))]
        ax.bar(xs, [100 * (row[j] or 0.0) for row in values], width, label=label)
    ax.set_xticks(range(len(rows)), [f"{t}\n{s}" if s != "all" else f"{t}\n(all)" for t, s, _ in rows],
                  rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("score (%)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def compare_runs(paths: list[str], out_dir: str) -> str:
    """Write OUT/compare.md and OUT/compare.png; return the table."""
    if len(paths) < 2:
        raise EveError("--compare needs at least two runs")
    labels, rows, values = compare(paths)
    table = markdown_table(labels, rows, values)
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "compare.md"), "w") as f:
        f.write(table)
    bar_chart(labels, rows, values, os.path.join(out_dir, "compare.png"))
    return table
