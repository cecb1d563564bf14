"""A prefix shared by every row runs once (eve_vlm.model.prefix): the same loss, gradients and
generated tokens as running it in every row."""

import copy

import torch

from eve_vlm.infer import GenerationOptions, encode, generate
from eve_vlm.model import prefix as prefix_module
from eve_vlm.model.prefix import common_prefix
from eve_vlm.model.prefix import batch_shared_length
from eve_vlm.train.trainer import summed_loss
from tiny import IMAGE_ID, conversations, image, independent_turns_batch, pad, row, text, tiny_eve


def batch_with_system_prompt(model):
    """Three right-padded rows that start with the same 12 text tokens, then differ (images of
    different sizes, one row without image); only the tail of each row is supervised."""
    torch.manual_seed(0)
    system = text(12)
    rows, pixels = [], []
    for pieces in ((image(32, 64), 5), (4, image(64, 32), 7), (9,)):
        r, imgs = row(model, *pieces)
        rows.append(torch.cat([system, r]))
        pixels += imgs
    ids, mask = pad(rows)
    labels = ids.masked_fill(mask == 0, -100)
    for i, r in enumerate(rows):
        labels[i, : len(r) - 3] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}


def loss_and_grads(model, batch, share):
    model.zero_grad(set_to_none=True)
    loss = summed_loss(model, batch, "cpu", share_prefix=share)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_shared_prefix_gives_the_same_loss_and_gradients():
    model = tiny_eve().train()
    batch = batch_with_system_prompt(model)
    assert batch_shared_length(batch, IMAGE_ID) == 12
    plain, plain_grads = loss_and_grads(model, batch, share=False)
    shared, shared_grads = loss_and_grads(model, batch, share=True)
    torch.testing.assert_close(shared, plain)
    assert shared_grads.keys() == plain_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(shared_grads[name], plain_grads[name], msg=name)


def test_the_prefix_stops_at_images_and_supervised_tokens():
    a, b = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 99]
    assert common_prefix([a, b], IMAGE_ID) == 10
    assert common_prefix([a, b], IMAGE_ID, limit=9) == 9
    assert common_prefix([a, b], IMAGE_ID, limit=7) == 0  # too short to be worth a forward
    assert common_prefix([a], IMAGE_ID) == 0
    img = [1, 2, 3, 4, 5, 6, 7, 8, 9, IMAGE_ID, IMAGE_ID]
    assert common_prefix([img, list(img)], IMAGE_ID) == 9  # identical rows still stop before the image


def test_generation_with_a_shared_prefix_equals_generation_without(tiny, monkeypatch):
    model, processor = tiny
    processor = copy.deepcopy(processor)
    processor.template = "eve"  # a 40-odd token system prompt before every conversation
    prompts = [encode(processor, c) for c in conversations()]
    assert common_prefix([p.input_ids for p in prompts], model.config.image_token_id) > 20
    options = GenerationOptions(max_new_tokens=10)
    shared = generate(model, processor, prompts, options)
    monkeypatch.setattr(prefix_module, "MIN_SHARED", 10**9)
    assert common_prefix([p.input_ids for p in prompts], model.config.image_token_id) == 0
    plain = generate(model, processor, prompts, options)
    alone = [generate(model, processor, [p], options)[0] for p in prompts]
    assert shared == plain == alone
    assert len({c.text for c in shared}) == 3


def test_independent_turns_share_their_images_exactly():
    from eve_vlm.model.prefix import group_prefixes

    for decoupled in (("attention", "norm", "ffn"), ()):
        model = tiny_eve(decoupled).train()
        batch = independent_turns_batch(model)
        assert batch["meta"]["groups"] == [0, 0, 1, 1, 1, 2]
        lengths = group_prefixes(batch, IMAGE_ID)
        heads = [6 + n for n in (model.model.patch_embed.num_tokens(32, 64), 3 + model.model.patch_embed.num_tokens(64, 32))]
        assert lengths[:2] == heads  # the system prompt and the images: the questions differ
        # one question: all but the one-token answer and the position that predicts it
        assert lengths[2] == int(batch["attention_mask"][5].sum()) - 2
        plain, plain_grads = loss_and_grads(model, batch, share=False)
        shared, shared_grads = loss_and_grads(model, batch, share=True)
        torch.testing.assert_close(shared, plain)
        # the vision copies of the last layer's q, o and FFN see only prefix positions, whose outputs
        # nothing reads: zero gradients in full rows, none at all (the same update) when shared
        assert set(shared_grads) <= set(plain_grads)
        for name in plain_grads:
            want = plain_grads[name]
            got = shared_grads.get(name, torch.zeros_like(want))
            torch.testing.assert_close(got, want, msg=name)
        assert all(".layers.1." in n and "vision" in n for n in set(plain_grads) - set(shared_grads))


def test_a_group_whose_rows_differ_before_the_images_is_not_shared():
    from eve_vlm.model.prefix import group_prefixes

    model = tiny_eve()
    batch = independent_turns_batch(model)
    batch["input_ids"][1, 2] = (batch["input_ids"][1, 2] + 1) % IMAGE_ID  # row 1's system prompt differs
    assert group_prefixes(batch, IMAGE_ID) is None
    del batch["meta"]["groups"]
    assert group_prefixes(batch, IMAGE_ID) is None
