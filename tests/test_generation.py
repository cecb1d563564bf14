"""KV-cache decoding equals full recompute; batched left-padded generation equals one-by-one."""

import torch

from tiny import image, pad, row, tiny_eve


def greedy_recompute(model, ids, images, steps):
    out = ids
    for _ in range(steps):
        with torch.no_grad():
            nxt = model(out, pixel_values=images).logits[:, -1].argmax(-1, keepdim=True)
        out = torch.cat([out, nxt], 1)
    return out


def test_kv_cache_generation_equals_recompute():
    model = tiny_eve()
    r, imgs = row(model, 4, image(64, 96), 5)
    cached = model.generate(r[None], pixel_values=imgs, max_new_tokens=12, do_sample=False)
    assert torch.equal(cached, greedy_recompute(model, r[None], imgs, 12))


def test_decode_step_logits_equal_recompute():
    model = tiny_eve()
    r, imgs = row(model, 4, image(64, 64), 5)
    with torch.no_grad():
        pre = model(r[None, :-1], pixel_values=imgs, use_cache=True)
        step = model(r[None, -1:], cache=pre.cache).logits[:, -1]
        full = model(r[None], pixel_values=imgs).logits[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


def test_batched_left_padded_generation_equals_one_by_one():
    model = tiny_eve()
    rows = [row(model, 3, image(64, 96), 6), row(model, 2, image(32, 64), 1), row(model, 9)]
    ids, attn = pad([r for r, _ in rows], side="left")
    images = [im for _, ims in rows for im in ims]
    gen = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    batched = model.generate(ids, attention_mask=attn, pixel_values=images, **gen)[:, ids.shape[1]:]
    for i, (r, ims) in enumerate(rows):
        single = model.generate(r[None], pixel_values=ims or None, **gen)[:, len(r):]
        assert torch.equal(batched[i], single[0]), i
