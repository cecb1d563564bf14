"""Checkpoints and exact resume: a run killed with SIGKILL (no chance to clean up) or stopped with
SIGTERM continues from its last checkpoint and logs exactly the losses of an uninterrupted run."""

import argparse
import os
import signal
import threading
import time

import pytest

from eve_vlm.errors import EveError
from eve_vlm.train import completed_summary, train, train_or_reuse
from eve_vlm.train.checkpoint import checkpoints
from eve_vlm.train.cli import add_commands
from tiny import base_recipe, losses, sigkill_after_checkpoint, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 24  # the killed run must still be running well after its step-4 checkpoint


def recipe(toy, run_dir, **extra):  # noqa: F811
    # 4 samples a step out of 32: the resumed run crosses epoch boundaries. The LLM stays frozen
    # (stage 2.1), so checkpoints hold only part of the model and resume must still restore it.
    return base_recipe(toy, run_dir, source="eve", **{"train.steps": STEPS, "train.groups": ["pel", "vision"],
                                         "train.warmup_ratio": 0.1, "checkpoint.every": 2, "checkpoint.keep": 2,
                                         **extra})


@pytest.fixture
def expected(toy, tmp_path):  # noqa: F811
    """The losses of an uninterrupted run."""
    reference = train(recipe(toy, tmp_path / "reference"))
    assert reference["completed"]
    out = losses(tmp_path / "reference")
    assert len(out) == STEPS and len(set(out)) == STEPS
    return out, reference


def test_sigkill_then_resume_equals_an_uninterrupted_run(toy, tmp_path, expected):  # noqa: F811
    expected, reference = expected
    run_dir = tmp_path / "run"
    path = write_recipe(recipe(toy, run_dir), tmp_path / "recipe.yaml")
    sigkill_after_checkpoint(path, run_dir)
    killed_at = max(step for step, _ in checkpoints(run_dir))
    assert killed_at < STEPS and not os.path.exists(run_dir / "model")

    resumed = train(recipe(toy, run_dir, **{"train.resume": "auto"}))
    assert resumed["completed"] and resumed["steps"] == STEPS
    assert losses(run_dir) == expected  # exact: fp32, one process, same data order
    assert resumed["samples"] == reference["samples"] and resumed["tokens"] == reference["tokens"]
    assert [s for s, _ in checkpoints(run_dir)] == [20, 22]  # keep: 2
    assert not any(d.endswith(".tmp") for d in os.listdir(run_dir / "checkpoints"))


def test_sigterm_finishes_the_step_saves_and_exits_then_resumes_exactly(toy, tmp_path, expected):  # noqa: F811
    expected, _ = expected
    run_dir = tmp_path / "run"
    path = write_recipe(recipe(toy, run_dir), tmp_path / "recipe.yaml")

    def stop_after_first_step():
        while not (os.path.exists(run_dir / "metrics.jsonl") and losses(run_dir)):
            time.sleep(0.005)
        if len(losses(run_dir)) < STEPS // 2:  # never signal pytest itself once the run is over
            os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    threading.Thread(target=stop_after_first_step, daemon=True).start()
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["train", path])
    with pytest.raises(SystemExit) as exit_:
        args.handler(args)
    assert exit_.value.code == 128 + signal.SIGTERM
    stopped = len(losses(run_dir))
    assert stopped < STEPS and checkpoints(run_dir)[-1][0] == stopped  # saved at the step it stopped at
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored

    with pytest.raises(EveError, match="already holds a run.*train.resume=auto"):
        train(recipe(toy, run_dir))  # a fresh start never overwrites a run
    assert completed_summary(run_dir) is None  # its summary says "stopped": not a stage to build on
    done = train_or_reuse(recipe(toy, run_dir))  # resumes from the checkpoint
    assert losses(run_dir) == expected
    assert completed_summary(run_dir) == done and train_or_reuse(recipe(toy, run_dir)) == done
