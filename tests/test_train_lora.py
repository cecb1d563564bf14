"""LoRA through the trainer (`train.lora`): a run writes peft's adapter and the merged model, which
load, agree and serve; the text path of a vision-only run stays the base model's bit for bit; held-out
evaluation, exact resume after SIGKILL and two processes under FSDP2 work as for full training; the
recipe section is checked like every other."""

import json
import os

import httpx
import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForImageTextToText

from eve_vlm.errors import EveError
from eve_vlm.infer import load
from eve_vlm.serve import create_app
from eve_vlm.model.decoder import EveDecoderLayer
from eve_vlm.train import lora, train
from eve_vlm.train.build import load_model
from eve_vlm.train.checkpoint import checkpoints
from eve_vlm.train.data import build_data
from eve_vlm.train.parallel import parallelize
from eve_vlm.train.recipe import RecipeError
from eve_vlm.train.trainer import summed_loss
from tiny import (VENV_BIN, base_recipe, image_batch, image_message, logits, losses, plain_loss, png, run,
                  serve_in_thread, sigkill_after_checkpoint, text_batch, write_recipe)

pytestmark = pytest.mark.usefixtures("one_thread")

VISION = {"r": 4, "alpha": 8, "dropout": 0.0, "target": "vision"}


def lora_recipe(toy, run_dir, lora=VISION, **extra):
    return base_recipe(toy, run_dir, source="eve", **{"train.groups": ["pel"], "train.lora": lora, **extra})


@pytest.fixture(scope="module")
def vision_run(toy, tmp_path_factory):
    """A finished vision-LoRA run (PEL trained fully) with held-out evaluation."""
    run_dir = tmp_path_factory.mktemp("lora") / "run"
    summary = train(lora_recipe(toy, run_dir, **{
        "train.steps": 4, "eval.sources": [{"path": toy["data"], "image_root": toy["images"]}],
        "eval.max_samples": 5}))
    return summary


def test_a_run_writes_the_adapter_and_the_merged_model(toy, vision_run):
    s = vision_run
    assert s["completed"] and s["model_dir"] == os.path.join(s["run_dir"], "model")
    assert s["parameters"]["llm"]["trainable"] == 0 and 0 < s["parameters"]["vision"]["trainable"] < \
        s["parameters"]["vision"]["total"] / 4
    pel = sum(p.numel() for p in AutoModelForImageTextToText.from_pretrained(toy["eve"]).model.patch_embed.parameters())
    assert s["parameters"]["pel"] == {"total": pel, "trainable": pel}  # trained fully, counted once
    base = AutoModelForImageTextToText.from_pretrained(toy["eve"])
    merged = AutoModelForImageTextToText.from_pretrained(s["model_dir"])
    assert not any("lora" in k or "modules_to_save" in k for k in merged.state_dict())
    assert merged.state_dict().keys() == base.state_dict().keys()
    images, text = image_batch(base), text_batch(base)
    adapted = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(toy["eve"]), s["adapter_dir"])
    expected = logits(adapted, images)
    assert torch.allclose(logits(merged, images), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(logits(base, images), expected, atol=1e-3)  # it trained
    # vision-only: every text-only answer is the base model's, bit for bit, and so are its LLM weights
    assert torch.equal(logits(merged, text), logits(base, text))
    base_weights, merged_weights = base.state_dict(), merged.state_dict()
    llm = [k for k in base_weights if ".vision_" not in k and "patch_embed" not in k]
    assert llm and all(torch.equal(merged_weights[k], base_weights[k]) for k in llm)


def test_held_out_loss_is_that_of_the_model_at_that_step(toy, vision_run):
    with open(os.path.join(vision_run["run_dir"], "metrics.jsonl")) as f:
        held_out = [r["eval_loss"] for r in map(json.loads, f) if "eval_loss" in r]
    assert len(held_out) == 2
    assert held_out[0] == pytest.approx(plain_loss(toy["eve"], toy, 5), rel=1e-5)  # LoRA starts as a no-op
    assert held_out[-1] == vision_run["eval_loss"] == pytest.approx(plain_loss(vision_run["model_dir"], toy, 5),
                                                                    rel=1e-5)
    assert held_out[-1] < held_out[0]


def test_the_merged_model_serves(vision_run):
    with serve_in_thread(create_app(*load(vision_run["model_dir"], device="cpu"), model_name="lora")) as url:
        reply = httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
            "model": "lora", "messages": [image_message("What is in this picture?", png("red"))], "max_tokens": 4})
    assert reply.status_code == 200, reply.text
    assert reply.json()["usage"]["completion_tokens"] >= 1


STEPS = 24  # the killed run must still be running well after its step-4 checkpoint


def test_sigkill_then_resume_equals_an_uninterrupted_run(toy, tmp_path):
    def recipe(run_dir, **extra):
        return lora_recipe(toy, run_dir, lora={**VISION, "dropout": 0.1}, **{
            "train.steps": STEPS, "train.warmup_ratio": 0.1, "checkpoint.every": 2, "checkpoint.keep": 2, **extra})

    reference = train(recipe(tmp_path / "reference"))
    expected = losses(tmp_path / "reference")
    assert len(set(expected)) == STEPS
    run_dir = tmp_path / "run"
    sigkill_after_checkpoint(write_recipe(recipe(run_dir), tmp_path / "recipe.yaml"), run_dir)
    assert max(step for step, _ in checkpoints(run_dir)) < STEPS and not os.path.exists(run_dir / "model")

    resumed = train(recipe(run_dir, **{"train.resume": "auto"}))
    assert resumed["completed"] and losses(run_dir) == expected  # exact: fp32, one process, same data and dropout
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        one, two = load_file(tmp_path / "reference" / name), load_file(run_dir / name)
        assert one.keys() == two.keys() and all(torch.equal(one[k], two[k]) for k in one), name
    assert resumed["parameters"] == reference["parameters"]


def test_two_processes_match_one(toy, tmp_path):
    overrides = {"train.steps": 3, "train.global_batch": 8, "train.micro_batch": 2, "checkpoint.every": 2,
                 "eval.sources": [{"path": toy["data"], "image_root": toy["images"]}], "eval.max_samples": 6}
    lora = {**VISION, "target": "all"}
    single = train(lora_recipe(toy, tmp_path / "one", lora, **overrides))
    path = write_recipe(lora_recipe(toy, tmp_path / "two", lora, **overrides), tmp_path / "two.yaml")
    run([os.path.join(VENV_BIN, "torchrun"), "--standalone", "--nproc_per_node=2", "-m", "eve_vlm.train",
         "train", path])
    assert single["completed"]
    assert losses(tmp_path / "two") == pytest.approx(losses(tmp_path / "one"), rel=1e-5)
    held_out = {run: [r["eval_loss"] for r in map(json.loads, open(tmp_path / run / "metrics.jsonl"))
                      if "eval_loss" in r] for run in ("one", "two")}
    assert len(held_out["two"]) == 2 and held_out["two"] == pytest.approx(held_out["one"], rel=1e-5)
    for name in ("model/model.safetensors", "adapter/adapter_model.safetensors"):
        one, two = (load_file(tmp_path / run / name) for run in ("one", "two"))
        assert one.keys() == two.keys(), name
        for key in one:
            torch.testing.assert_close(two[key], one[key], rtol=1e-4, atol=5e-5, msg=f"{name}: {key}")
    (step, ckpt), = checkpoints(tmp_path / "two")  # sharded: one file of tensors per rank, and the adapter config
    assert step == 2 and {"__0_0.distcp", "__1_0.distcp", "adapter_config.json"} <= set(os.listdir(ckpt))


def test_activation_checkpointing_recomputes_the_adapted_layers(toy, tmp_path):
    recipe = lora_recipe(toy, tmp_path / "run")
    model, processor = load_model(recipe.model, recipe.data)
    model = lora.apply(model, recipe.train.lora, recipe.train.groups).train()
    parallelize(model, world=1, bf16=False, activation_checkpointing=True)
    calls = []
    for layer in model.modules():
        if isinstance(layer, EveDecoderLayer):
            layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    loss = summed_loss(model, next(iter(build_data(recipe.data, processor, 4, 1, seed=0))), "cpu")
    forwards = len(calls)
    loss.backward()
    assert forwards == len(calls) - forwards == model.config.num_hidden_layers
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    train(recipe)
    train(lora_recipe(toy, tmp_path / "checkpointed", **{"train.activation_checkpointing": True}))
    assert losses(tmp_path / "checkpointed") == pytest.approx(losses(tmp_path / "run"), rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ({"train.groups": ["pel", "vision"]}, "train.groups has ['vision'] but with train.lora"),
    ({"train.lora": {"rank": 4}}, "unknown key train.lora.rank"),
    ({"train.lora": {"target": "text"}}, "train.lora.target: 'text' is not one of"),
    ({"train.lora": {"r": 0}}, "train.lora.r must be at least 1"),
    ({"train.lora": None, "train.groups": []}, "train.groups: at least 1 required"),
])
def test_recipe_errors_name_the_key(toy, tmp_path, override, message):
    with pytest.raises(RecipeError, match=message.replace("[", r"\[").replace("]", r"\]")):
        lora_recipe(toy, tmp_path / "run", **override)


def test_recipe_takes_lora_with_no_group(toy, tmp_path):
    r = lora_recipe(toy, tmp_path / "run", lora={"target": ["q_proj", "vision_mlp.*"]}, **{"train.groups": []})
    assert r.train.groups == [] and r.train.lora.target == ("q_proj", "vision_mlp.*") and r.train.lora.r == 16


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_qlora_without_cuda_stops_before_training(toy, tmp_path):
    with pytest.raises(EveError, match="needs a CUDA device"):
        train(lora_recipe(toy, tmp_path / "run", lora={**VISION, "qlora": True}))
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")
