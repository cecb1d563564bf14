"""Watching a run: one JSON line per optimizer step in RUN/metrics.jsonl (plus a step-0 line with
the held-out loss before training, when the recipe has an `eval` section), the same scalars as
TensorBoard events in RUN/tb, and `plot` for loss and learning-rate curves."""

import math
import os

from ..extras import needs, pyplot
from ..jsonl import JsonlWriter, read_jsonl


def read_metrics(run_dir: str) -> list[dict]:
    """The records of metrics.jsonl."""
    return list(read_jsonl(os.path.join(run_dir, "metrics.jsonl")))


def train_records(records: list[dict]) -> list[dict]:
    """The per-step training records (not the step-0 held-out line)."""
    return [r for r in records if "loss" in r]


class MetricsWriter:
    """Rank 0 writes; on resume the records after the checkpoint's step (logged by the run that was
    interrupted, and about to be logged again) are dropped."""

    def __init__(self, run_dir: str, start_step: int = 0, tensorboard: bool = True):
        self.file = JsonlWriter(os.path.join(run_dir, "metrics.jsonl"))
        # A fresh start (no checkpoint) replaces whatever an earlier, checkpoint-less attempt logged
        # (TensorBoard too: purge_step discards the older files' events from that step on).
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start_step] if start_step else []
        self.file.replace(kept)
        self.tb = None
        if tensorboard:
            with needs("train", "TensorBoard logging"):
                from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(os.path.join(run_dir, "tb"), purge_step=start_step + 1 if start_step else 0)

    def log(self, record: dict) -> None:
        self.file.write(record)
        self.file.sync()
        if self.tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self.tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def plot(run_dir: str, out: str | None = None) -> str:
    """Training loss (raw and smoothed), held-out loss where logged, and learning rates per group
    against the step, as a PNG."""
    plt = pyplot("train", "training curves")
    everything = read_metrics(run_dir)
    records = train_records(everything)
    if not records:
        raise FileNotFoundError(f"{run_dir}: no metrics.jsonl records to plot")
    steps = [r["step"] for r in records]
    fig, (ax_loss, ax_lr) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    loss = [r["loss"] for r in records]
    ax_loss.plot(steps, loss, alpha=0.35, label="loss")
    ax_loss.plot(steps, _ema(loss, 0.9 if len(loss) > 20 else 0.0), label="smoothed")
    held_out = [(r["step"], r["eval_loss"]) for r in everything if "eval_loss" in r]
    if held_out:
        ax_loss.plot(*zip(*held_out), "o-", label="held-out")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in sorted({k for r in records for k in r if k.startswith("lr/")}):
        ax_lr.plot(steps, [r.get(key, math.nan) for r in records], label=key[3:])
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("step")
    ax_lr.legend()
    fig.suptitle(os.path.basename(os.path.abspath(run_dir)))
    fig.tight_layout()
    out = out or os.path.join(run_dir, "curves.png")
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def _ema(values: list[float], beta: float) -> list[float]:
    out, avg = [], None
    for v in values:
        avg = v if avg is None else beta * avg + (1 - beta) * v
        out.append(avg)
    return out
