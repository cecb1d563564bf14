"""Freezing per stage, the stage 1 -> 2.1 hand-over (vision copies = LLM weights), the frozen-weight
guard, and an end-of-stage model folder that loads on its own."""

import pytest
import torch
from safetensors.torch import load_file

from eve_vlm.errors import EveError
from eve_vlm.model import EveForConditionalGeneration
from eve_vlm.model.groups import param_group
from eve_vlm.train import init_vision, init_vision_folder, train
from eve_vlm.train import trainer as trainer_module
from tiny import base_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def weights(folder) -> dict[str, torch.Tensor]:
    return load_file(f"{folder}/model.safetensors")


@pytest.mark.parametrize("groups", [["pel"], ["pel", "vision"], ["pel", "vision", "llm"]],
                         ids=["stage1", "stage2.1", "stage2.2"])
def test_frozen_groups_stay_bit_identical_and_trained_ones_move(toy, tmp_path, groups):  # noqa: F811
    summary = train(base_recipe(toy, tmp_path / "run", source="eve", **{"train.groups": groups}))
    assert summary["completed"] and summary["steps"] == 3
    assert {g: c["trainable"] > 0 for g, c in summary["parameters"].items()} == \
        {g: g in groups for g in ("pel", "vision", "llm")}
    before, after = weights(toy["eve"]), weights(summary["model_dir"])
    assert before.keys() == after.keys()
    for name in before:
        if param_group(name) in groups:
            assert not torch.equal(before[name], after[name]), f"{name} did not train"
        else:
            assert torch.equal(before[name], after[name]), f"{name} is frozen but changed"


def test_stage1_model_feeds_stage21_with_vision_copies_equal_to_the_llm(toy, tmp_path):  # noqa: F811
    stage1 = train(base_recipe(toy, tmp_path / "stage1", **{"train.steps": 2}))
    s1 = weights(stage1["model_dir"])
    assert not any(".vision_" in n for n in s1)  # official stage 1: no vision copies yet

    # `eve init-vision`: the copies are exact copies of the (trained-with-the-PEL, frozen) LLM weights
    out = init_vision_folder(stage1["model_dir"], str(tmp_path / "init"))
    copied = weights(out)
    vision = [n for n in copied if ".vision_" in n]
    assert len(vision) == sum(".layers." in n for n in s1)  # every decoder tensor got its copy
    for name in vision:
        assert torch.equal(copied[name], s1[name.replace("vision_", "")])
    for name in s1:
        assert torch.equal(copied[name], s1[name])

    # the same from a recipe: stage 2.1 starts from the stage-1 folder with model.init_vision=true
    stage21 = train(base_recipe(toy, tmp_path / "stage21", source=stage1["model_dir"], **{
        "model.init_vision": True, "train.groups": ["pel", "vision"], "train.steps": 2}))
    s21 = weights(stage21["model_dir"])
    for name in s1:
        if param_group(name) == "llm":
            assert torch.equal(s21[name], s1[name])
    assert all(not torch.equal(s21[n], copied[n]) for n in vision)
    reloaded = EveForConditionalGeneration.from_pretrained(stage21["model_dir"])
    assert reloaded.config.decoupled == ["attention", "norm", "ffn"]


def test_init_vision_keeps_text_outputs():
    from tiny import IMAGE_ID, text, tiny_eve

    model = tiny_eve(decoupled=())
    new = init_vision(model).eval()
    ids = text(12)[None]
    with torch.no_grad():
        assert torch.equal(new(input_ids=ids).logits, model(input_ids=ids).logits)
    assert new.config.image_token_id == IMAGE_ID


def test_a_frozen_parameter_that_moves_fails_the_stage(toy, tmp_path, monkeypatch):  # noqa: F811
    real = trainer_module.make_optimizer

    def buggy(model, cfg):  # an optimizer that also steps a frozen tensor
        opt = real(model, cfg)
        frozen = model.get_parameter("model.layers.0.mlp.up_proj.weight")
        opt.add_param_group({"params": [frozen], "lr": 1e-2, "name": "bug"})
        frozen.grad = torch.ones_like(frozen)  # AdamW moves it even if it never gets a real gradient
        return opt

    monkeypatch.setattr(trainer_module, "make_optimizer", buggy)
    with pytest.raises(RuntimeError, match="frozen parameters changed.*layers.0.mlp.up_proj.weight"):
        train(base_recipe(toy, tmp_path / "run", **{"train.steps": 1}))


def test_training_a_group_the_model_lacks_is_an_error(toy, tmp_path):  # noqa: F811
    with pytest.raises(EveError, match="no vision parameters.*init_vision"):
        train(base_recipe(toy, tmp_path / "run", **{"train.groups": ["pel", "vision"]}))


def test_a_missing_source_folder_is_named(toy, tmp_path):  # noqa: F811
    with pytest.raises(EveError, match="model.source: .*missing/model does not exist"):
        train(base_recipe(toy, tmp_path / "run", **{"model.source": str(tmp_path / "missing" / "model")}))


def test_bf16_falls_back_to_fp32_on_a_cpu_without_bf16_matmuls(toy, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    train(base_recipe(toy, tmp_path / "run", **{"train.steps": 1, "train.bf16": True}))
    assert "bf16: false" in (tmp_path / "run" / "recipe.yaml").read_text()
