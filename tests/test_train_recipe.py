"""Recipes: typed sections, overrides with types, errors that name the key, the value and what is
allowed, a saved recipe that reads back equal, and the shipped recipes."""

import glob
import os

import pytest
import yaml

from eve_vlm.data.mixture import Source
from eve_vlm.dtypes import TORCH_NAMES
from eve_vlm.model.config import DECOUPLABLE
from eve_vlm.model.groups import GROUPS
from eve_vlm.processing.chat import TEMPLATES, TURNS
from eve_vlm.processing.image import RESIZE_MODES
from eve_vlm.train.recipe import Recipe, RecipeError, load_recipe, save_recipe
from eve_vlm.train.schedule import SCHEDULES
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
                           "model.config.pel_hidden_size=64", "train.bf16=false", "eval.every=5"])
    assert isinstance(r, Recipe) and r.train.lr == 1e-4 and r.train.groups == ["pel", "vision"]
    assert r.data.packing is True and r.train.steps == 10 and r.train.max_grad_norm is None
    assert r.data.sources == [Source(path="b.jsonl")] and r.model.config == {"pel_hidden_size": 64}
    assert r.train.bf16 is False and r.eval.every == 5
    assert r.train.warmup_ratio == 0.03 and r.checkpoint.keep == 2 and r.train.betas == (0.9, 0.999)  # defaults
    assert load_recipe(path).train.lr == 2e-4  # "2e-4" (YAML 1.1 reads it as a string) is a float


@pytest.mark.parametrize("override, message", [
    # unknown keys name the key and what its section takes
    ("train.lrr=1e-4", r"unknown key train.lrr; train takes \[.*'lr'"),
    ("trian.lr=1", r"unknown key trian; a recipe takes \['checkpoint', 'data', 'eval', 'model', 'output', 'train'\]"),
    ("data.sources.0.imageroot=x", r"unknown key data.sources.0.imageroot; data.sources.0 takes \['image_root'"),
    ("eval.sources=[{path: v.jsonl, root: x}]", "unknown key eval.sources.0.root"),
    ("data.sources=[{image_root: x}]", "data.sources.0.path is required"),
    # wrong types name the key, the expected type and the value
    ("train.global_batch=many", "train.global_batch: expected int, got str 'many'"),
    ("train.global_batch=8.0", "train.global_batch: expected int, got float 8.0"),
    ("train.lr=true", "train.lr: expected float, got bool True"),
    ("train.bf16=1", "train.bf16: expected bool or 'auto', got int 1"),
    ("data.packing=yes please", "data.packing: expected bool, got str"),
    ("eval.sources=[v.jsonl]", "eval.sources.0: expected a mapping, got str 'v.jsonl'"),
    ("model.source=[a, b]", "model.source: expected str"),
    # bad choices name the allowed values
    ("train.groups=[pel, vison]", "train.groups.1: expected 'pel', 'vision' or 'llm', got str 'vison'"),
    ("data.template=chatml", "data.template: expected 'plain', 'eve' or 'native', got str 'chatml'"),
    ("data.sources.0.template=chatml", "data.sources.0.template: expected 'plain', 'eve' or 'native'"),
    ("data.resize_mode=crop", "data.resize_mode: expected 'inference' or 'train'"),
    ("data.turns=separate", "data.turns: expected 'joint' or 'independent', got str 'separate'"),
    ("model.decoupled=[attention, mlp]", "model.decoupled.1: expected 'attention', 'norm' or 'ffn'"),
    ("train.schedule=linear", "train.schedule: expected 'cosine' or 'constant'"),
    ("output.dtype=bf16", "output.dtype: expected 'float32', 'bfloat16' or 'float16'"),
    # values and combinations
    ("train.groups=[]", "train.groups: at least 1 required"),
    ("train.micro_batch=3", r"train.global_batch \(8\) must be a multiple of train.micro_batch \(3\)"),
    ("eval.every=0", "eval.every: input should be greater than or equal to 1, got 0"),
    (("model.init_vision=true", "model.decoupled=[]"), "model.init_vision needs vision copies"),
    # malformed overrides
    ("data.sources.3.path=x", "data.sources.3"),
    ("train.lr", "expected KEY=VALUE"),
    ("train.groups=[pel", "override train.groups=\\[pel: the value is not YAML"),
])
def test_errors_name_the_key(path, override, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(path, [override] if isinstance(override, str) else override)


def test_every_problem_is_reported_on_its_own_line(path):
    with pytest.raises(RecipeError) as error:
        load_recipe(path, ["train.lr=fast", "data.template=chatml", "output.tensorboard=1"])
    lines = str(error.value).splitlines()
    assert lines[0] == f"{path}:" and len(lines) == 4
    assert [line.split(":")[0] for line in lines[1:]] == ["data.template", "train.lr", "output.tensorboard"]


@pytest.mark.parametrize("key, owner", [
    ("data.template", TEMPLATES), ("data.resize_mode", RESIZE_MODES), ("data.turns", TURNS),
    ("train.schedule", SCHEDULES), ("output.dtype", tuple(TORCH_NAMES.values())), ("train.groups", GROUPS),
    ("model.decoupled", DECOUPLABLE)])
def test_choices_are_those_of_the_module_that_owns_them(path, key, owner):
    listed = (lambda v: f"[{v}]") if key in ("train.groups", "model.decoupled") else (lambda v: v)
    for value in owner:
        load_recipe(path, [f"{key}={listed(value)}"])
    with pytest.raises(RecipeError) as error:
        load_recipe(path, [f"{key}={listed('nope')}"])
    assert ", ".join(map(repr, owner[:-1])) + f" or {owner[-1]!r}, got str 'nope'" in str(error.value)


def test_independent_turns_do_not_pack(path):
    with pytest.raises(RecipeError, match="data.packing and data.turns=independent"):
        load_recipe(path, ["data.turns=independent", "data.packing=true"])
    assert load_recipe(path, ["data.turns=independent"]).data.turns == "independent"


@pytest.mark.parametrize("section", ["output", "model"])
def test_missing_required_key(tmp_path, section):
    p = tmp_path / "r.yaml"
    p.write_text(yaml.safe_dump({k: v for k, v in MINIMAL.items() if k != section}))
    with pytest.raises(RecipeError, match=f"{section}.(dir|source) is required"):
        load_recipe(str(p))


def test_a_saved_recipe_is_plain_yaml_and_loads_back_equal(path, tmp_path):
    r = load_recipe(path, ["eval.sources=[{path: v.jsonl, image_root: img, template: eve}]", "train.bf16=auto"])
    save_recipe(r, str(tmp_path / "saved.yaml"))
    raw = yaml.safe_load((tmp_path / "saved.yaml").read_text())
    assert raw["train"]["betas"] == [0.9, 0.999] and raw["eval"]["sources"][0]["template"] == "eve"
    assert list(raw) == ["model", "data", "train", "eval", "checkpoint", "output"]
    assert load_recipe(str(tmp_path / "saved.yaml")) == r


def test_shipped_recipes_load():
    paths = sorted(glob.glob(os.path.join(ROOT, "recipes", "**", "*.yaml"), recursive=True))
    assert len(paths) >= 8
    for p in paths:
        assert isinstance(load_recipe(p), Recipe), p


def test_evev2_recipes_have_the_official_numbers():
    stages = ["stage1", "stage2.1a", "stage2.1b", "stage2.2", "stage3"]
    r = {s: load_recipe(os.path.join(ROOT, "recipes", "evev2-7b", f"{s}.yaml")) for s in stages}
    col = lambda section, key: [getattr(getattr(r[s], section), key) for s in stages]  # noqa: E731
    assert col("train", "lr") == [2e-4, 1e-4, 5e-5, 2e-5, 1e-5]
    assert col("train", "global_batch") == [1024, 1024, 1024, 512, 512]
    assert col("data", "max_length") == [2048, 2048, 4096, 4096, 5000]
    assert col("data", "max_size") == [800, 800, 1600, 1600, 1600]
    assert col("data", "template") == ["plain", "plain", "plain", "eve", "eve"]
    assert col("train", "groups") == [["pel"], ["pel", "vision"], ["pel", "vision"]] + [["pel", "vision", "llm"]] * 2
    assert set(col("train", "warmup_ratio")) == {0.03} and set(col("train", "weight_decay")) == {0.0}
    assert set(col("train", "epochs")) == {1.0} and set(col("train", "max_grad_norm")) == {1.0}
    assert r["stage1"].model.decoupled == [] and r["stage2.1a"].model.init_vision
    for a, b in zip(stages, stages[1:]):  # each stage starts from the previous one's model folder
        assert r[b].model.source == os.path.join(r[a].output.dir, "model")
