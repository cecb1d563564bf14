"""`eve export`: a mid-stage checkpoint becomes a model folder equal to the model at that step (its
held-out loss is the one the trainer logged there), with the frozen weights rebuilt from the source.
Every saved folder (a stage's final model, an export) resizes images with the inference rule."""

import json
import os
import shutil

import pytest
from PIL import Image
from safetensors.torch import load_file

from eve_vlm.cli import main
from eve_vlm.processing import EveProcessor, target_size
from eve_vlm.train import train
from tiny import base_recipe, plain_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(folder) -> dict:
    return load_file(os.path.join(folder, "model.safetensors"))


def test_export_of_a_checkpoint_equals_the_model_at_that_step(toy, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    held_out = [{"path": toy["data"], "image_root": toy["images"]}]
    # stage-2.1-like: the LLM stays frozen, so the export must rebuild it from the source
    summary = train(base_recipe(toy, run, source="eve", **{
        "train.groups": ["pel", "vision"], "train.steps": 4, "checkpoint.every": 2, "checkpoint.keep": 1,
        "eval.sources": held_out, "eval.every": 2, "eval.max_samples": 5}))
    logged = {r["step"]: r["eval_loss"] for r in map(json.loads, open(run / "metrics.jsonl")) if "eval_loss" in r}

    assert main(["export", str(run / "checkpoints" / "step-2"), str(tmp_path / "step2")]) == 0
    assert str(tmp_path / "step2") in capsys.readouterr().out
    assert plain_loss(str(tmp_path / "step2"), toy, 5) == pytest.approx(logged[2], rel=1e-5)
    assert logged[2] != pytest.approx(logged[4], rel=1e-3)  # step 2 is not the final model

    exported, final = _weights(tmp_path / "step2"), _weights(summary["model_dir"])
    source = _weights(toy["eve"])
    assert exported.keys() == final.keys()
    llm = [k for k in exported if "vision" not in k and "patch_embed" not in k]
    assert llm and all(exported[k].equal(source[k]) for k in llm)  # frozen: the source's, bit for bit
    assert any(not exported[k].equal(final[k]) for k in exported if k not in llm)

    # a run folder means its latest checkpoint
    assert main(["export", str(run), str(tmp_path / "latest")]) == 0
    assert all(v.equal(exported[k]) for k, v in _weights(tmp_path / "latest").items())


def test_export_refuses_what_it_cannot_do(toy, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    train(base_recipe(toy, run, **{"train.steps": 2, "checkpoint.every": 1}))
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    cases = [
        ([str(run / "checkpoints" / "step-1"), str(tmp_path / "busy")], "is not an empty folder"),
        ([str(run / "checkpoints"), str(tmp_path / "a")], "not a complete checkpoint"),
        ([str(tmp_path / "copy" / "checkpoints" / "step-1"), str(tmp_path / "b")], "pass the stage's recipe"),
        ([str(tmp_path / "busy"), str(tmp_path / "c"), "--recipe", str(run / "recipe.yaml")], "not a complete"),
    ]
    shutil.copytree(run / "checkpoints", tmp_path / "copy" / "checkpoints")  # without the run's recipe
    for args, message in cases:
        assert main(["export", *args]) == 2
        assert message in capsys.readouterr().err
    assert (tmp_path / "busy" / "keep.txt").read_text() == "mine"


def test_saved_folders_resize_with_the_inference_rule_whatever_the_training_used(toy, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    summary = train(base_recipe(toy, run, **{"data.resize_mode": "train", "train.steps": 2, "checkpoint.every": 1}))
    assert main(["export", str(run), str(tmp_path / "exported")]) == 0
    small = Image.new("RGB", (40, 24), "red")  # under the 64² budget: only the inference rule upscales it
    assert target_size(24, 40, 64, "train") == (32, 32)
    for folder in (summary["model_dir"], tmp_path / "exported"):
        processor = EveProcessor.from_pretrained(folder)
        assert processor.image_processor.resize_mode == "inference"
        assert processor.image_processor(small)["image_sizes"] == [target_size(24, 40, 64, "inference")] == [(64, 96)]
