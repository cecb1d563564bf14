"""Sparse (gather/scatter) routing equals a naive dense-blend reference written here from scratch."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from eve_vlm.model.config import DECOUPLABLE
from tiny import IMAGE_ID, image, pad, row, tiny_eve

VARIANTS = [list(c) for r in range(len(DECOUPLABLE) + 1) for c in itertools.combinations(DECOUPLABLE, r)]


def naive_pel(pel, img):
    """Official PEL, one image, token by token: CLS, then each row's patches followed by SPL."""
    f = F.conv2d(F.gelu(F.conv2d(img[None], pel.conv1.weight, pel.conv1.bias, stride=16)),
                 pel.conv2.weight, pel.conv2.bias, stride=2)[0]
    tokens = [pel.class_embedding]
    for r in range(f.shape[1]):
        tokens += [f[:, r, c] for c in range(f.shape[2])] + [pel.split_embedding]
    return torch.stack(tokens)


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def blend(x, m, text_fn, vision_fn):
    """The official `moe_function`: both branches on every token, mixed by the visual mask."""
    return text_fn(x) * (1 - m) + vision_fn(x) * m


def rope(x, pos, theta):
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float) / d)
    ang = pos[:, None, :, None].float() * inv
    cos, sin = torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def reference_logits(model, ids, attn_mask, images):
    cfg, m = model.config, model.model
    visual = ids == IMAGE_ID
    x = m.embed_tokens(ids).clone()
    x[visual] = torch.cat([naive_pel(m.patch_embed, im) for im in images])
    mask = visual[..., None].float()
    b, n = ids.shape
    pos = torch.arange(n).expand(b, n)
    allowed = torch.tril(torch.ones(n, n, dtype=torch.bool)) & attn_mask.bool()[:, None, :]
    hd, groups = cfg.head_dim, cfg.num_attention_heads // cfg.num_key_value_heads

    def vis(layer_or_attn, name):  # the vision copy, or the shared module when not decoupled
        return getattr(layer_or_attn, f"vision_{name}") or getattr(layer_or_attn, name)

    for layer in m.layers:
        a = layer.self_attn
        h = blend(x, mask, lambda t: rms(t, layer.input_layernorm.weight, cfg.rms_norm_eps),
                  lambda t: rms(t, vis(layer, "input_layernorm").weight, cfg.rms_norm_eps))
        q, k, v = (blend(h, mask, getattr(a, f"{p}_proj"), vis(a, f"{p}_proj")).view(b, n, -1, hd).transpose(1, 2)
                   for p in "qkv")
        q, k = rope(q, pos, cfg.rope_parameters["rope_theta"]), rope(k, pos, cfg.rope_parameters["rope_theta"])
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q @ k.transpose(-1, -2)) / hd**0.5
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        o = (scores.softmax(-1).nan_to_num() @ v).transpose(1, 2).reshape(b, n, -1)
        x = x + blend(o, mask, a.o_proj, vis(a, "o_proj"))
        h = blend(x, mask, lambda t: rms(t, layer.post_attention_layernorm.weight, cfg.rms_norm_eps),
                  lambda t: rms(t, vis(layer, "post_attention_layernorm").weight, cfg.rms_norm_eps))
        x = x + blend(h, mask, layer.mlp, vis(layer, "mlp"))
    return model.lm_head(rms(x, m.norm.weight, cfg.rms_norm_eps))


@pytest.mark.parametrize("decoupled", VARIANTS, ids=lambda v: "+".join(v) or "none")
def test_sparse_routing_equals_dense_blend(decoupled):
    model = tiny_eve(decoupled)
    # images of different sizes and aspect ratios, two in one row, right padding
    r0, im0 = row(model, 3, image(64, 96), 4, image(32, 32), 2)
    r1, im1 = row(model, 5, image(96, 64), 3)
    ids, attn = pad([r0, r1], side="right")
    with torch.no_grad():
        got = model(ids, attention_mask=attn, pixel_values=im0 + im1).logits
        ref = reference_logits(model, ids, attn, im0 + im1)
    keep = attn.bool()
    torch.testing.assert_close(got[keep], ref[keep], rtol=1e-4, atol=1e-4)


def test_patch_embedding_layout_matches_token_by_token_construction():
    pel = tiny_eve().model.patch_embed
    imgs = [image(64, 96), image(32, 32), image(64, 96)]
    for got, img in zip(pel(imgs), imgs):
        h, w = img.shape[1] // 32, img.shape[2] // 32
        assert got.shape[0] == 1 + h * (w + 1)
        torch.testing.assert_close(got, naive_pel(pel, img))


@pytest.mark.parametrize("hw,n", [((32, 32), 3), ((800, 800), 651), ((1600, 1600), 2551), ((704, 928), 661),
                                  ((1408, 1856), 2597), ((1216, 2144), 2585), ((64, 96), 9)])
def test_token_count_formula(hw, n):
    from eve_vlm import num_visual_tokens

    assert num_visual_tokens(*hw) == n


def test_bad_image_sides_are_refused():
    from eve_vlm import num_visual_tokens

    with pytest.raises(ValueError, match="multiples of 32"):
        num_visual_tokens(50, 64)


def test_gradients_reach_vision_copies_only_through_images():
    model = tiny_eve().train()
    vision = {n: p for n, p in model.named_parameters() if ".vision_" in n or n.startswith("model.patch_embed.")}
    ids, attn = pad([row(model, 9)[0], row(model, 6)[0]])
    model(ids, attention_mask=attn, labels=ids.masked_fill(attn == 0, -100)).loss.backward()
    for n, p in vision.items():
        assert p.grad is None or not p.grad.any(), n
    model.zero_grad(set_to_none=True)
    r, imgs = row(model, 3, image(64, 64), 6)
    labels = r.masked_fill(r == IMAGE_ID, -100)
    model(r[None], pixel_values=imgs, labels=labels[None]).loss.backward()
    for n, p in vision.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_supervised_logits_equal_full_logits_and_loss():
    """The trainer asks for logits at supervised positions only; values and loss must not change."""
    from eve_vlm.train.trainer import summed_loss

    model = tiny_eve()
    a, imgs_a = row(model, 3, image(64, 32), 5)
    b, imgs_b = row(model, 6)
    ids, mask = pad([a, b])
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, : len(a) - 4] = -100  # only the last few tokens of the image row are answers
    pixels = imgs_a + imgs_b
    with torch.no_grad():
        full = model(ids, pixel_values=pixels, attention_mask=mask).logits
        keep = torch.zeros_like(ids, dtype=torch.bool)
        keep[:, :-1] = labels[:, 1:] != -100
        part = model(ids, pixel_values=pixels, attention_mask=mask, logits_to_keep=keep).logits
        batch = {"input_ids": ids, "attention_mask": mask, "labels": labels, "pixel_values": pixels}
        loss = summed_loss(model, batch, "cpu")
    assert part.shape == (int(keep.sum()), full.shape[-1])
    torch.testing.assert_close(part, full[keep])
    ref = F.cross_entropy(full[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100, reduction="sum")
    torch.testing.assert_close(loss, ref)


# Layouts with edge cases of the modality-sorted order: an image at the very start and at the very
# end of a row, a row with no image in a mixed batch, visual rows in three different rows, right padding.
LAYOUTS = {
    "row-without-image": lambda m: [row(m, 3, image(64, 96), 4), row(m, 7)],
    "images-in-every-row": lambda m: [row(m, image(32, 64), 5), row(m, 2, image(32, 32), 1, image(64, 32)),
                                      row(m, 4, image(32, 32), 9)],
}


def _params_grads(model, loss):
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True, retain_graph=True)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("decoupled", VARIANTS, ids=lambda v: "+".join(v) or "none")
def test_sparse_routing_gradients_equal_dense_blend(decoupled, layout):
    model = tiny_eve(decoupled)
    rows = LAYOUTS[layout](model)
    ids, attn = pad([r for r, _ in rows], side="right")
    images = [im for _, ims in rows for im in ims]
    keep = attn.bool()
    weights = torch.randn(int(keep.sum()), model.config.vocab_size)  # a loss that sees every logit
    got = model(ids, attention_mask=attn, pixel_values=images).logits[keep]
    ref = reference_logits(model, ids, attn, images)[keep]
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    names = [n for n, _ in model.named_parameters()]
    for n, g, r in zip(names, _params_grads(model, (got * weights).sum()), _params_grads(model, (ref * weights).sum())):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4, msg=n)


def _loss_and_grads(model, **inputs):
    model.zero_grad(set_to_none=True)
    loss = model(**inputs).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointing_and_inputs_embeds_give_the_same_loss_and_gradients(reentrant):
    model = tiny_eve().train()
    rows = LAYOUTS["row-without-image"](model)
    ids, attn = pad([r for r, _ in rows])
    images = [im for _, ims in rows for im in ims]
    common = dict(attention_mask=attn, labels=ids.masked_fill((attn == 0) | (ids == IMAGE_ID), -100))
    base = _loss_and_grads(model, input_ids=ids, pixel_values=images, **common)
    model.activation_checkpointing_enable({"use_reentrant": reentrant})
    assert model.model.layers[0].gradient_checkpointing
    ckpt = _loss_and_grads(model, input_ids=ids, pixel_values=images, **common)
    model.activation_checkpointing_disable()
    embeds, visual = model.model.embed(ids, images)
    via_embeds = _loss_and_grads(model, inputs_embeds=embeds, visual_mask=visual, **common)
    assert any(".vision_" in n for n in base[1]) and any("patch_embed" in n for n in base[1])
    for loss, grads in (ckpt, via_embeds):
        torch.testing.assert_close(loss, base[0])
        assert grads.keys() == base[1].keys()
        for n, g in base[1].items():
            torch.testing.assert_close(grads[n], g, rtol=1e-5, atol=1e-6, msg=n)


def test_text_only_forwards_and_decode_steps_never_permute(monkeypatch):
    from eve_vlm.model import decoupled

    calls = []
    permute = decoupled._Permute.apply
    monkeypatch.setattr(decoupled._Permute, "apply", lambda *a: calls.append(1) or permute(*a))
    model = tiny_eve()
    gen = dict(max_new_tokens=4, do_sample=False)
    model.generate(row(model, 9)[0][None], **gen)
    assert not calls
    r, imgs = row(model, 4, image(32, 64), 3)
    with torch.no_grad():
        model(r[None], pixel_values=imgs)
    per_prefill = len(calls)  # sort + unsort once, q/k/v/attention output in every layer
    assert per_prefill == 2 + 4 * model.config.num_hidden_layers
    model.generate(r[None], pixel_values=imgs, **gen)
    assert len(calls) == 2 * per_prefill
