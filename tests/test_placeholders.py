"""Placeholder / image mismatches are clear errors, never silent misalignment."""

import pytest
import torch

from eve_vlm.errors import PlaceholderMismatchError
from tiny import IMAGE_ID, image, pad, row, text, tiny_eve


@pytest.fixture(scope="module")
def model():
    return tiny_eve()


def test_too_few_placeholders(model):
    r, imgs = row(model, 2, image(64, 64), 2)
    r = torch.cat([r[:5], r[6:]])  # drop one placeholder
    with pytest.raises(PlaceholderMismatchError, match="image 0 needs 7 placeholder tokens but row 0 has a block of only 6"):
        model(r[None], pixel_values=imgs)


def test_extra_placeholders(model):
    r, imgs = row(model, 2, image(64, 64), 2)
    r = torch.cat([r, torch.tensor([IMAGE_ID])])
    with pytest.raises(PlaceholderMismatchError, match="left over"):
        model(r[None], pixel_values=imgs)


def test_extra_image(model):
    r, imgs = row(model, 2, image(64, 64), 2)
    with pytest.raises(PlaceholderMismatchError, match=r"image\(s\) \[1\] have no placeholders"):
        model(r[None], pixel_values=imgs + [image(32, 32)])


def test_placeholders_without_images(model):
    r, _ = row(model, 2, image(64, 64), 2)
    with pytest.raises(PlaceholderMismatchError, match="no pixel_values"):
        model(r[None])


def test_image_block_cannot_span_rows(model):
    r0, imgs = row(model, 2, image(64, 64))
    ids, attn = pad([r0[:-3], torch.cat([torch.full((3,), IMAGE_ID), text(4)])])
    with pytest.raises(PlaceholderMismatchError):
        model(ids, attention_mask=attn, pixel_values=imgs)


def test_bad_image_tensor(model):
    r, _ = row(model, 2, image(64, 64), 2)
    with pytest.raises(ValueError, match=r"\[3, H, W\]"):
        model(r[None], pixel_values=[torch.randn(64, 64)])
    with pytest.raises(ValueError, match="multiples of 32"):
        model(r[None], pixel_values=[torch.randn(3, 60, 64)])


def test_empty_image_list_is_a_text_only_batch(model):
    ids = text(6)[None]
    torch.testing.assert_close(model(ids, pixel_values=[]).logits, model(ids).logits)
    r, _ = row(model, 2, image(64, 64), 2)
    with pytest.raises(PlaceholderMismatchError, match="no pixel_values"):
        model(r[None], pixel_values=[])
