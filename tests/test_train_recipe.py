"""Recipes: overrides with types, errors that name the bad key, and the shipped recipes."""

import glob
import os

import pytest
import yaml

from eve_vlm.train.recipe import RecipeError, load_recipe
from tiny import ROOT

MINIMAL = {"model": {"source": "smollm2"}, "data": {"sources": [{"path": "a.jsonl"}]},
           "train": {"groups": ["pel"], "lr": "2e-4", "global_batch": 8}, "output": {"dir": "runs/x"}}


@pytest.fixture
def path(tmp_path):
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(MINIMAL))
    return str(p)


def test_defaults_and_typed_overrides(path):
    r = load_recipe(path, ["train.lr=1e-4", "train.groups=[pel, vision]", "data.packing=true", "train.steps=10",
                           "train.max_grad_norm=null", "data.sources.0.path=b.jsonl",
                           "model.config.pel_hidden_size=64"])
    assert r["train"]["lr"] == 1e-4 and r["train"]["groups"] == ["pel", "vision"]
    assert r["data"]["packing"] is True and r["train"]["steps"] == 10 and r["train"]["max_grad_norm"] is None
    assert r["data"]["sources"][0]["path"] == "b.jsonl" and r["model"]["config"] == {"pel_hidden_size": 64}
    assert r["train"]["warmup_ratio"] == 0.03 and r["checkpoint"]["keep"] == 2  # defaults filled in
    assert load_recipe(path)["train"]["lr"] == 2e-4  # "2e-4" (YAML 1.1 reads it as a string) is a float


@pytest.mark.parametrize("override, message", [
    ("train.lrr=1e-4", "unknown key train.lrr"),
    ("trian.lr=1", "unknown section 'trian'"),
    ("train.global_batch=many", "train.global_batch: expected int"),
    ("train.bf16=1", "train.bf16: expected bool"),
    ("train.groups=[pel, vison]", r"train.groups: unknown \['vison'\]"),
    ("data.template=chatml", "data.template: 'chatml' is not one of"),
    ("data.sources.0.imageroot=x", "unknown key data.sources.0.imageroot"),
    ("data.sources.3.path=x", "data.sources.3"),
    ("train.micro_batch=3", "multiple of train.micro_batch"),
    ("model.decoupled=[attention, mlp]", "model.decoupled: unknown"),
    ("train.lr", "expected KEY=VALUE"),
    ("eval.sources=[{path: v.jsonl, root: x}]", "unknown key eval.sources.0.root"),
    ("eval.sources=[v.jsonl]", "eval.sources.0: expected a mapping"),
    ("eval.every=0", "eval.every must be >= 1"),
    ("data.turns=separate", "data.turns: 'separate' is not one of"),
])
def test_errors_name_the_key(path, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(path, [override])


def test_independent_turns_do_not_pack(path):
    with pytest.raises(RecipeError, match="data.packing and data.turns=independent"):
        load_recipe(path, ["data.turns=independent", "data.packing=true"])
    assert load_recipe(path, ["data.turns=independent"])["data"]["turns"] == "independent"


def test_missing_required_key(tmp_path):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({k: v for k, v in MINIMAL.items() if k != "output"}))
    with pytest.raises(RecipeError, match="output.dir is required"):
        load_recipe(str(p))


def test_shipped_recipes_load():
    paths = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
    assert len(paths) >= 8
    for p in paths:
        load_recipe(p)


def test_evev2_recipes_have_the_official_numbers():
    stages = ["stage1", "stage2.1a", "stage2.1b", "stage2.2", "stage3"]
    r = {s: load_recipe(os.path.join(ROOT, "recipes", "evev2-7b", f"{s}.yaml")) for s in stages}
    col = lambda section, key: [r[s][section][key] for s in stages]  # noqa: E731
    assert col("train", "lr") == [2e-4, 1e-4, 5e-5, 2e-5, 1e-5]
    assert col("train", "global_batch") == [1024, 1024, 1024, 512, 512]
    assert col("data", "max_length") == [2048, 2048, 4096, 4096, 5000]
    assert col("data", "max_size") == [800, 800, 1600, 1600, 1600]
    assert col("data", "template") == ["plain", "plain", "plain", "eve", "eve"]
    assert col("train", "groups") == [["pel"], ["pel", "vision"], ["pel", "vision"]] + [["pel", "vision", "llm"]] * 2
    assert set(col("train", "warmup_ratio")) == {0.03} and set(col("train", "weight_decay")) == {0.0}
    assert set(col("train", "epochs")) == {1.0} and set(col("train", "max_grad_norm")) == {1.0}
    assert r["stage1"]["model"]["decoupled"] == [] and r["stage2.1a"]["model"]["init_vision"]
    for a, b in zip(stages, stages[1:]):  # each stage starts from the previous one's model folder
        assert r[b]["model"]["source"] == os.path.join(r[a]["output"]["dir"], "model")
