"""Held-out loss during a stage (the recipe's `eval` section): logged before step 1, every N steps
and at the end; equal to the loss of the model at that step computed the plain way; and it never
changes what training does."""

import json

import pytest

from eve_vlm.train import train
from eve_vlm.train.metrics import plot
from tiny import base_recipe, losses, plain_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_eval_loss_is_logged_and_equals_the_model_loss(toy, tmp_path):  # noqa: F811
    held_out = [{"path": toy["data"], "image_root": toy["images"]}]
    summary = train(base_recipe(toy, tmp_path / "run", **{
        "eval.sources": held_out, "eval.every": 2, "eval.max_samples": 5, "train.micro_batch": 2,
        "train.steps": 3}))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert [r["step"] for r in records if "eval_loss" in r] == [0, 2, 3]  # before, every 2, the end
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert records[-1]["eval_loss"] == summary["eval_loss"]
    assert summary["eval_loss"] == pytest.approx(plain_loss(summary["model_dir"], toy, 5), rel=1e-5)
    assert records[0]["eval_loss"] == pytest.approx(plain_loss(toy["stage1"], toy, 5), rel=1e-5)
    assert records[0]["eval_loss"] != pytest.approx(summary["eval_loss"], rel=1e-3)  # it trained
    assert plot(str(tmp_path / "run")).endswith(".png")


def test_evaluating_does_not_change_training(toy, tmp_path):  # noqa: F811
    held_out = [{"path": toy["data"], "image_root": toy["images"]}]
    train(base_recipe(toy, tmp_path / "plain", **{"train.steps": 4}))
    train(base_recipe(toy, tmp_path / "eval", **{"train.steps": 4, "eval.sources": held_out, "eval.every": 1,
                                                 "eval.max_samples": 3}))
    assert losses(tmp_path / "eval") == losses(tmp_path / "plain")  # exactly: no RNG, no state touched
