"""The analytic step FLOPs: a hand calculation on the tiny config, and torch's FlopCounterMode on a
tiny model's forward + backward, per stage."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from eve_vlm.data.collate import Collator
from eve_vlm.data.packing import PackingCollator
from eve_vlm.processing.chat import IGNORE_INDEX
from eve_vlm.model.prefix import batch_shared_length
from eve_vlm.train.build import freeze
from eve_vlm.train import lora
from eve_vlm.train.flops import Adapters, batch_flops, step_flops
from eve_vlm.train.lora import LoraSpec
from eve_vlm.train.trainer import summed_loss
from tiny import image, independent_turns_batch, row, tiny_eve

STAGES = [((), ["pel"]), (("attention", "norm", "ffn"), ["pel", "vision"]),
          (("attention", "norm", "ffn"), ["pel", "vision", "llm"]), (("ffn",), ["pel", "vision"])]
STAGE_IDS = ["stage1", "stage2.1", "stage2.2", "ffn-only-2.1"]


def test_hand_calculation_on_the_tiny_config():
    """hidden 64, intermediate 128, 2 layers, 4 heads / 2 KV heads of 16, vocab 160, PEL 32.
    One row of 10 text + 7 visual tokens (a 64x64 image), padded to 20; 6 supervised positions."""
    config = tiny_eve().config
    per_token = (2 * 64 * 64 + 2 * 2 * 64 * 32 + 2 * 64 * 64) + 3 * 2 * 64 * 128  # q, k+v, o; gate, up, down
    assert per_token == 73728
    pairs, per_pair = 17 * 18 // 2, 4 * 4 * 16  # causal pairs of 17 real tokens; QK^T + AV per pair
    pad_pairs = 20 * 21 // 2 - pairs  # the 3 padding queries' causal pairs
    head = 2 * 64 * 160 * 6
    conv1, conv2 = 2 * (3 * 16 * 16) * 32 * 16, 2 * (32 * 4) * 64 * 4  # 4x4 patches, 2x2 tokens
    kw = dict(seq_lens=[[17]], width=20, visual=7, targets=6, image_sizes=[(64, 64)])

    # stage 2.2: everything trains, so every matmul's backward is 2x its forward (conv1: weight only)
    f = batch_flops(config, ["pel", "vision", "llm"], **kw)
    assert f.parts == {"linear": 3 * per_token * 17 * 2, "attention": 3 * pairs * per_pair * 2,
                       "lm_head": 3 * head, "pel": 2 * conv1 + 3 * conv2}
    assert f.useful == sum(f.parts.values())
    assert f.padding == 3 * per_token * 3 * 2 + 3 * pad_pairs * per_pair * 2

    # stage 1: the LLM is frozen but passes gradients to the PEL: input gradients only (1x)
    f = batch_flops(config, ["pel"], **kw)
    assert f.parts == {"linear": 2 * per_token * 17 * 2, "attention": 3 * pairs * per_pair * 2,
                       "lm_head": 2 * head, "pel": 2 * conv1 + 3 * conv2}

    # stage 2.1: text rows pass gradients (2x), visual rows train their copies (3x)
    f = batch_flops(config, ["pel", "vision"], **kw)
    assert f.parts["linear"] == (2 * 10 + 3 * 7) * per_token * 2
    assert f.parts["lm_head"] == 2 * head

    # a text-only batch with the LLM frozen reaches no trainable weight: forward only
    f = batch_flops(config, ["pel"], seq_lens=[[17]], width=17, visual=0, targets=6, image_sizes=[])
    assert f.parts == {"linear": per_token * 17 * 2, "attention": pairs * per_pair * 2, "lm_head": head, "pel": 0}
    assert f.padding == 0


def _samples(model):
    out = []
    for i, pieces in enumerate([(5, image(64, 64), 7), (3, image(32, 64), 2), (9,)]):
        ids, imgs = row(model, *pieces)
        labels = ids.clone()
        labels[:4] = IGNORE_INDEX
        out.append({"id": i, "input_ids": ids, "labels": labels, "pixel_values": imgs,
                    "num_image_tokens": [model.model.patch_embed.num_tokens(*im.shape[1:]) for im in imgs]})
    return out


def _counted(model, batch) -> int:
    with FlopCounterMode(display=False) as counter:
        summed_loss(model, batch, "cpu").backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("decoupled, groups", STAGES, ids=STAGE_IDS)
def test_flop_counter_agrees_on_forward_and_backward(decoupled, groups):
    """FlopCounterMode counts every mm / addmm / conv (and their backward) that really runs; CPU
    SDPA (`_scaled_dot_product_flash_attention_for_cpu`) has no formula there, so it counts no
    attention; eager attention is two bmm over the FULL padded square. Adjusted for that, the
    counts agree exactly (neither counts the q/k/v bias adds)."""
    model = tiny_eve(decoupled=decoupled).train()
    freeze(model, groups)
    batch = Collator(pad_token_id=0)(_samples(model))
    width, rows, layers = batch["input_ids"].shape[1], 3, model.config.num_hidden_layers
    per_pair = 4 * model.config.num_attention_heads * model.config.head_dim
    f = step_flops(model.config, groups, [batch])
    causal = layers * rows * width * (width + 1) // 2 * per_pair * 3  # real + padding queries, fwd + bwd
    full = layers * rows * width * width * per_pair * 3

    assert _counted(model, batch) == f.useful + f.padding - causal  # sdpa: no attention counted
    model.config._attn_implementation = "eager"
    assert _counted(model, batch) == f.useful + f.padding - causal + full


def test_packing_moves_padding_not_useful_work():
    model = tiny_eve()
    samples = _samples(model)
    groups = ["pel", "vision", "llm"]
    padded = step_flops(model.config, groups, [Collator(0)(samples)])
    packed = step_flops(model.config, groups, [PackingCollator(64, 0)(samples)])
    # the same samples: the same useful work (attention stays within each packed sample)
    assert {k: v for k, v in packed.parts.items() if k != "lm_head"} == \
        {k: v for k, v in padded.parts.items() if k != "lm_head"}
    assert padded.padding > 0 and packed.padding == 0  # 37 tokens fit one packed row


@pytest.mark.parametrize("decoupled, groups", STAGES[1:3], ids=STAGE_IDS[1:3])
def test_a_shared_prefix_is_counted_once(decoupled, groups):
    """Rows that start with the same text (a system prompt) run it once (eve_vlm.model.prefix):
    the count drops by the prefix's rows, and still equals what FlopCounterMode sees."""
    model = tiny_eve(decoupled=decoupled).train()
    freeze(model, groups)
    torch.manual_seed(0)
    system = row(model, 10)[0]
    samples = []
    for i in range(3):  # equal lengths: no padding, so only the attention core is left to adjust for
        ids, imgs = row(model, image(64, 64), 7)
        ids = torch.cat([system, ids])
        labels = ids.clone()
        labels[:12] = IGNORE_INDEX
        samples.append({"id": i, "input_ids": ids, "labels": labels, "pixel_values": imgs, "num_image_tokens": [7]})
    batch = Collator(pad_token_id=0)(samples)
    assert batch_shared_length(batch, model.config.image_token_id) == 10
    plain = step_flops(model.config, groups, [batch])
    shared = step_flops(model.config, groups, [batch], share_prefix=True)
    assert plain.padding == shared.padding == 0
    assert shared.parts["linear"] < plain.parts["linear"] and shared.parts["pel"] == plain.parts["pel"]
    with FlopCounterMode(display=False) as counter:
        summed_loss(model, batch, "cpu", share_prefix=True).backward()
    assert counter.get_total_flops() == shared.useful - shared.parts["attention"]  # sdpa: no attention counted


@pytest.mark.parametrize("decoupled, groups", [STAGES[0], STAGES[-1]], ids=[STAGE_IDS[0], STAGE_IDS[-1]])
def test_independent_turns_count_each_prefix_once(decoupled, groups):
    """Independent turns run each record's prefix (its images) once and its questions from there:
    fewer FLOPs than the full rows, and exactly what FlopCounterMode sees (linear, LM head, PEL)."""
    model = tiny_eve(decoupled=decoupled).train()
    freeze(model, groups)
    batch = independent_turns_batch(model)
    plain = step_flops(model.config, groups, [batch])
    shared = step_flops(model.config, groups, [batch], share_prefix=True)
    assert shared.parts["linear"] < plain.parts["linear"] and shared.parts["pel"] < plain.parts["pel"]
    assert shared.parts["lm_head"] == plain.parts["lm_head"]
    with FlopCounterMode(display=False) as counter:
        summed_loss(model, batch, "cpu", share_prefix=True).backward()
    assert counter.get_total_flops() == shared.useful + shared.padding - shared.parts["attention"] - shared.padding_attention


LORA = [(("attention", "norm", "ffn"), "vision", []), (("attention", "norm", "ffn"), "vision", ["pel"]),
        (("attention", "norm", "ffn"), "all", []), (("ffn",), "all", ["pel"]),
        (("attention", "norm", "ffn"), ("model.layers.1.self_attn.vision_o_proj",), []),
        (("attention", "norm", "ffn"), ("model.layers.1.mlp.down_proj", "k_proj"), [])]


def _lora(decoupled, target, groups):
    """(a LoRA model, a padded batch, the adapters as the FLOP count takes them)"""
    model = tiny_eve(decoupled=decoupled).train()
    adapters = Adapters(4, frozenset(lora.resolve_target(model, target)))
    batch = Collator(pad_token_id=0)(_samples(model))
    return lora.apply(model, LoraSpec(r=4, dropout=0.0, target=target), groups), batch, adapters


@pytest.mark.parametrize("decoupled, target, groups", LORA)
def test_flop_counter_agrees_under_lora(decoupled, target, groups):
    """LoRA: the frozen base passes gradients on from the first adapter (per modality until the
    attention core mixes them), every adapter adds its two small matmuls, the padding rows run the
    text adapters too. (Attention is left out: without a trained layer before it, the first
    layers' attention has no backward, which FlopCounterMode's missing SDPA formula cannot show.)"""
    model, batch, adapters = _lora(decoupled, target, groups)
    f = step_flops(model.config, groups, [batch], adapters=adapters)
    assert _counted(model, batch) == f.useful + f.padding - f.parts["attention"] - f.padding_attention
    assert f.useful > step_flops(model.config, groups, [batch]).useful  # the adapters' work is counted


def test_flop_counter_agrees_under_lora_with_independent_turns():
    model, _, adapters = _lora(("attention", "norm", "ffn"), "vision", [])
    batch = independent_turns_batch(lora.base(model))
    f = step_flops(model.config, [], [batch], share_prefix=True, adapters=adapters)
    with FlopCounterMode(display=False) as counter:
        summed_loss(model, batch, "cpu", share_prefix=True).backward()
    assert counter.get_total_flops() == f.useful + f.padding - f.parts["attention"] - f.padding_attention
