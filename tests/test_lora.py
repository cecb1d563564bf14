"""LoRA through peft (`eve_vlm.train.lora`): a vision-only adapter leaves every text-only answer
bit-identical to the base model, before and after training; only adapters (and the PEL, if asked)
get gradients; merged == unmerged; the adapter reloads with peft on the base folder; bad targets
and QLoRA without CUDA are clear errors."""

import copy
import os

import pytest
import torch
from peft import PeftModel
from torch.distributed.checkpoint import FileSystemReader
from transformers import AutoModelForImageTextToText

from eve_vlm.cli import main
from eve_vlm.errors import EveError
from eve_vlm.model.groups import param_group
from eve_vlm.processing import EveProcessor
from eve_vlm.train import checkpoint, lora
from eve_vlm.train.build import changed, fingerprint, freeze, load_model
from eve_vlm.train.export import export_checkpoint
from eve_vlm.train.lora import LoraSpec
from eve_vlm.train.recipe import load_recipe, save_recipe
from eve_vlm.train.toy import toy_model
from eve_vlm.train.export import save_final
from tiny import base_recipe, image_batch, logits, text_batch, tiny_eve

VARIANTS = [("attention", "norm", "ffn"), ("attention",), ("ffn",), ("attention", "ffn")]  # with vision linears


def loss(model, batch) -> torch.Tensor:
    out = model(**batch).logits[:, :-1]
    return torch.nn.functional.cross_entropy(out.flatten(0, 1), batch["input_ids"][:, 1:].flatten())


def randomize_adapters(model, std: float = 0.1) -> None:
    """LoRA B starts at zero (the adapter is then a no-op); move B and the trained PEL copy so that
    any routing or merging mistake shows in the outputs."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and "lora_A" not in name:
                p.add_(torch.randn_like(p) * std)


def train_steps(model, batch, steps: int = 3, lr: float = 1e-2) -> None:
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss(model, batch).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)


@pytest.mark.parametrize("decoupled", VARIANTS)
@pytest.mark.parametrize("target,nonzero_b", [("vision", False), ("vision", True), ("llm", True)])
def test_vision_lora_leaves_text_only_logits_bit_identical(decoupled, target, nonzero_b):
    model = tiny_eve(decoupled)
    text, images = text_batch(model), image_batch(model)
    base_text, base_images = logits(model, text), logits(model, images)
    n_base = len(list(model.named_parameters()))
    peft_model = lora.apply(model, LoraSpec(r=4, alpha=8, dropout=0.1, target=target), groups=["pel"])
    if nonzero_b:
        randomize_adapters(peft_model)
    frozen = fingerprint(peft_model)  # the trainer's check: every base weight, none of the trained ones
    before = logits(peft_model, text)
    train_steps(peft_model, images)
    after, after_images = logits(peft_model, text), logits(peft_model, images)
    assert len(frozen) == n_base and changed(frozen, fingerprint(peft_model)) == []
    assert not torch.allclose(after_images, base_images, atol=1e-3)  # the adapter did learn something
    if target == "vision":
        assert torch.equal(before, base_text) and torch.equal(after, base_text)
    else:  # the control: adapting the text path does change text answers, so the check can fail
        assert not torch.allclose(after, base_text, atol=1e-3)


@pytest.mark.parametrize("groups", [[], ["pel"]])
@pytest.mark.parametrize("target", ["vision", "all", ("q_proj", "vision_mlp.*")])
def test_gradients_reach_only_the_adapters_and_the_pel_if_asked(target, groups):
    model = tiny_eve()
    adapted = lora.resolve_target(model, target)
    pel = [n for n, _ in model.model.patch_embed.named_parameters()]
    peft_model = lora.apply(model, LoraSpec(r=4, target=target), groups)
    loss(peft_model.train(), image_batch(model)).backward()
    got = {n for n, p in peft_model.named_parameters() if p.grad is not None}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    prefix = "base_model.model."
    lora_names = {f"{prefix}{m}.lora_{ab}.default.weight" for m in adapted for ab in "AB"}
    pel_names = {f"{prefix}model.patch_embed.modules_to_save.default.{n}" for n in pel} if groups else set()
    assert got == trainable == lora_names | pel_names
    assert all(peft_model.get_parameter(n).grad.abs().sum() > 0 for n in lora_names if "lora_B" in n)
    assert {param_group(n) for n in pel_names} <= {"pel"}  # the PEL keeps its own learning rate
    if target == "vision":
        assert {param_group(n) for n in lora_names} == {"vision"}


@pytest.mark.parametrize("target,decoupled", [  # a vision target without vision linears is an error (below)
    (t, d) for d in [*VARIANTS, (), ("norm",)] for t in lora.TARGETS if t != "vision" or d in VARIANTS])
def test_merged_equals_unmerged(target, decoupled):
    model = tiny_eve(decoupled)
    batch = image_batch(model)
    base, base_keys = logits(model, batch), set(model.state_dict())
    peft_model = lora.apply(model, LoraSpec(r=4, alpha=16, target=target), groups=["pel"])
    randomize_adapters(peft_model)
    unmerged = logits(peft_model, batch)
    merged = lora.merge(peft_model)
    assert type(merged).__name__ == "EveForConditionalGeneration" and set(merged.state_dict()) == base_keys
    assert torch.allclose(logits(merged, batch), unmerged, atol=1e-5, rtol=0)
    assert not torch.allclose(base, unmerged, atol=1e-3)  # the adapter mattered


def test_adapter_and_merged_folder_reload(tmp_path):
    """adapter/: peft's format, on the base folder; model/: a plain eve folder for the Auto classes and
    `eve serve`'s loader. Both give the fine-tuned model's outputs."""
    from eve_vlm.infer import load

    base_dir = toy_model(str(tmp_path / "base"), decoupled=["attention", "norm", "ffn"])
    model = AutoModelForImageTextToText.from_pretrained(base_dir)
    batch = image_batch(model)
    peft_model = lora.apply(model, LoraSpec(r=4, target="vision"), groups=["pel"])
    randomize_adapters(peft_model)
    expected = logits(peft_model, batch)

    lora.save_adapter(peft_model, str(tmp_path / "adapter"))
    reloaded = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base_dir), tmp_path / "adapter")
    assert torch.equal(logits(reloaded, batch), expected)

    save_final(lora.merge(peft_model), EveProcessor.from_pretrained(base_dir), str(tmp_path / "model"), "float32", rank=0)
    assert torch.allclose(logits(AutoModelForImageTextToText.from_pretrained(tmp_path / "model"), batch), expected,
                          atol=1e-5, rtol=0)
    served, _ = load(str(tmp_path / "model"), device="cpu")
    assert torch.allclose(logits(served, batch), expected, atol=1e-5, rtol=0)


def test_targets_resolve_per_variant():
    full = tiny_eve()
    vision = lora.resolve_target(full, "vision")
    assert len(vision) == 2 * 7 and all(".vision_" in n for n in vision)
    assert len(lora.resolve_target(full, "llm")) == 2 * 7 and not any("vision" in n for n in lora.resolve_target(full, "llm"))
    assert set(lora.resolve_target(full, "all")) == set(vision) | set(lora.resolve_target(full, "llm"))
    assert lora.resolve_target(tiny_eve(["ffn"]), "vision") == [
        f"model.layers.{i}.vision_mlp.{p}" for i in range(2) for p in ("gate_proj", "up_proj", "down_proj")]
    assert lora.resolve_target(full, ["model.layers.1.*.q_proj"]) == ["model.layers.1.self_attn.q_proj"]
    assert lora.resolve_target(full, ["o_proj"]) == [f"model.layers.{i}.self_attn.o_proj" for i in range(2)]


@pytest.mark.parametrize("decoupled", [(), ("norm",)])
def test_vision_target_without_vision_linears_is_an_error(decoupled):
    model = tiny_eve(decoupled)
    with pytest.raises(EveError, match="no vision copy of a linear layer"):
        lora.apply(model, LoraSpec(target="vision"), groups=[])
    assert lora.resolve_target(model, "all") == lora.resolve_target(model, "llm")


def test_bad_targets_are_errors_that_list_the_linear_modules():
    model = tiny_eve()
    for target, why in [(["q_projj"], "matches no module"),
                        (["vision_input_layernorm"], "which are not Linear")]:
        with pytest.raises(EveError, match=why) as e:
            lora.apply(copy.deepcopy(model), LoraSpec(target=target), groups=[])
        assert "model.layers.*.self_attn.vision_q_proj" in str(e.value) and "lm_head" in str(e.value)
    with pytest.raises(EveError, match="not one of"):
        LoraSpec(target="text")
    with pytest.raises(EveError, match="may only hold"):
        lora.apply(model, LoraSpec(), groups=["pel", "vision"])
    with pytest.raises(EveError, match="tie_word_embeddings"):
        lora.apply(tiny_eve(tie_word_embeddings=True), LoraSpec(target=["lm_head"]), groups=[])


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without CUDA")
def test_qlora_without_cuda_is_a_clear_error():
    model = tiny_eve()
    with pytest.raises(EveError, match="needs a CUDA device"):
        lora.apply(model, LoraSpec(qlora=True), groups=["pel"])
    assert not any(".lora_" in n for n, _ in model.named_parameters())  # nothing half-applied


# --------------------------------------------------------------------------- checkpoints and eve export


def write_checkpoint(toy, run_dir, spec: LoraSpec | None):
    """A run folder with a step-1 checkpoint written as the trainer writes it (through
    `checkpoint.save`): LoRA (adapters and the PEL trained) or, with no spec, a plain stage-2.1 one."""
    recipe = base_recipe(toy, run_dir, source="eve", **{"train.groups": ["pel"] if spec else ["pel", "vision"]})
    os.makedirs(run_dir / "checkpoints")
    save_recipe(recipe, str(run_dir / "recipe.yaml"))
    model, _ = load_model(recipe.model, recipe.data)
    batch = image_batch(model)
    if spec:
        model = lora.apply(model, spec, recipe.train.groups)
    else:
        freeze(model, recipe.train.groups)
    randomize_adapters(model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    train_steps(model, batch, steps=1)
    checkpoint.save(str(run_dir), 1, model, optimizer, {"step": 1, "world_size": 1}, keep=1)
    return model.eval(), batch


def test_lora_checkpoint_exports_merged_or_adapter(toy, tmp_path, capsys):  # noqa: F811
    run = tmp_path / "run"
    model, batch = write_checkpoint(toy, run, LoraSpec(r=4, target="vision"))
    step = run / "checkpoints" / "step-1"
    saved = FileSystemReader(str(step)).read_metadata().state_dict_metadata
    trained = {f"model.{n}" for n, p in model.named_parameters() if p.requires_grad}
    assert (step / lora.CONFIG_FILE).is_file() and {k for k in saved if k.startswith("model.")} == trained
    expected = logits(model, batch)

    # resume: the same adapters rebuilt from the run's recipe and the checkpoint's adapter config
    recipe = load_recipe(str(run / "recipe.yaml"), [])
    fresh = lora.wrap(load_model(recipe.model, recipe.data)[0], lora.saved_config(str(step)))
    optimizer = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    assert checkpoint.load(str(step), fresh, optimizer)["step"] == 1
    assert torch.equal(logits(fresh, batch), expected) and optimizer.state

    for flags, out in [(["--merge"], "merged"), ([], "default")]:
        assert main(["export", str(step), str(tmp_path / out), *flags]) == 0
        exported = AutoModelForImageTextToText.from_pretrained(tmp_path / out)
        assert not any("lora" in k for k in exported.state_dict())
        assert torch.allclose(logits(exported, batch), expected, atol=1e-5, rtol=0)

    assert main(["export", str(run), str(tmp_path / "adapter"), "--adapter-only"]) == 0
    assert str(tmp_path / "adapter") in capsys.readouterr().out
    base = AutoModelForImageTextToText.from_pretrained(toy["eve"])
    assert torch.equal(logits(PeftModel.from_pretrained(base, tmp_path / "adapter"), batch), expected)


def test_merge_and_adapter_only_need_a_lora_checkpoint(toy, tmp_path, capsys):  # noqa: F811
    write_checkpoint(toy, tmp_path / "run", None)
    for flag in ("--merge", "--adapter-only"):
        assert main(["export", str(tmp_path / "run"), str(tmp_path / "out"), flag]) == 2
        assert "is not a LoRA checkpoint" in capsys.readouterr().err
    with pytest.raises(EveError, match="exclude each other"):
        export_checkpoint(str(tmp_path / "run"), str(tmp_path / "out"), merge=True, adapter_only=True)
    assert not (tmp_path / "out").exists()
