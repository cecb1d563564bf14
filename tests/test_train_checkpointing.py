"""Activation checkpointing (`train.activation_checkpointing: true`): every decoder layer runs its
forward again in the backward instead of keeping its activations, for the same loss and gradients."""

import pytest
import torch

from eve_vlm.model.decoder import EveDecoderLayer
from eve_vlm.train import train
from eve_vlm.train.build import freeze, load_model
from eve_vlm.train.data import build_data
from eve_vlm.train.parallel import parallelize
from eve_vlm.train.trainer import summed_loss
from tiny import base_recipe, losses

pytestmark = pytest.mark.usefixtures("one_thread")


def loss_and_grads(recipe, activation_checkpointing: bool):
    """Loss, gradients, attention calls in the forward and in the backward, and the number of layers."""
    torch.manual_seed(0)
    model, processor = load_model(recipe.model, recipe.data)
    freeze(model, recipe.train.groups)
    model.train()
    parallelize(model, world=1, bf16=False, activation_checkpointing=activation_checkpointing)
    calls = []  # attention calls: inside the checkpointed layer forward, so the recompute runs them again
    for layer in model.modules():
        if isinstance(layer, EveDecoderLayer):
            layer.self_attn.register_forward_hook(lambda *_: calls.append(1))
    batch = next(iter(build_data(recipe.data, processor, micro_batch=4, grad_accum=1, seed=0)))
    loss = summed_loss(model, batch, "cpu")
    forward_calls = len(calls)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, forward_calls, len(calls) - forward_calls, model.config.num_hidden_layers


def test_same_loss_and_gradients_with_each_layer_recomputed(toy, tmp_path):  # noqa: F811
    recipe = base_recipe(toy, tmp_path, source="eve", **{"train.groups": ["pel", "vision", "llm"]})
    loss, grads, forwards, recomputed, layers = loss_and_grads(recipe, False)
    assert (forwards, recomputed) == (layers, 0)
    ckpt_loss, ckpt_grads, forwards, recomputed, _ = loss_and_grads(recipe, True)
    assert (forwards, recomputed) == (layers, layers)  # each layer once more, inside the backward
    torch.testing.assert_close(ckpt_loss, loss, rtol=0, atol=0)
    assert ckpt_grads.keys() == grads.keys() and len(grads) > 0
    for name in grads:
        assert grads[name] is not None, name
        torch.testing.assert_close(ckpt_grads[name], grads[name], rtol=1e-6, atol=1e-7, msg=name)


def test_a_run_with_checkpointing_trains_as_one_without(toy, tmp_path):  # noqa: F811
    overrides = {"train.groups": ["pel", "vision", "llm"], "train.steps": 2}
    plain = train(base_recipe(toy, tmp_path / "plain", source="eve", **overrides))
    ckpt = train(base_recipe(toy, tmp_path / "ckpt", source="eve", **overrides,
                             **{"train.activation_checkpointing": True}))
    assert plain["completed"] and ckpt["completed"]
    # the shared-prefix shortcut is off under checkpointing: same loss, other summation order
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-5)
    assert "activation_checkpointing: true" in (tmp_path / "ckpt" / "recipe.yaml").read_text()
