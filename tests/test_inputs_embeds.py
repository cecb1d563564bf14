"""The `inputs_embeds` + `visual_mask` entry of the model: embeddings built outside the model (the
token embeddings with the PEL outputs in the placeholder rows) give the logits of `input_ids` +
`pixel_values`, and the mask is what routes those rows through the vision copies."""

import pytest
import torch

from tiny import IMAGE_ID, image, pad, row, tiny_eve


def outside_embeds(model, ids: torch.Tensor, images: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """What a caller holding its own embeddings passes: token embeddings, each image's PEL tokens
    written in order over its placeholder rows, and the mask of those rows."""
    visual = ids == IMAGE_ID
    embeds = model.get_input_embeddings()(ids).clone()
    visual_tokens = torch.cat([model.model.patch_embed([im])[0] for im in images])
    embeds[visual] = visual_tokens.to(embeds.dtype)
    return embeds, visual


@pytest.mark.parametrize("side", ["left", "right"])
def test_inputs_embeds_with_visual_mask_give_the_logits_of_input_ids(side):
    model = tiny_eve()
    rows = [row(model, 3, image(64, 96), 4), row(model, 7), row(model, image(32, 32), 2, image(32, 64), 1)]
    ids, attn = pad([r for r, _ in rows], side=side)
    images = [im for _, ims in rows for im in ims]
    with torch.no_grad():
        want = model(input_ids=ids, pixel_values=images, attention_mask=attn).logits
        embeds, visual = outside_embeds(model, ids, images)
        got = model(inputs_embeds=embeds, visual_mask=visual, attention_mask=attn).logits
        unrouted = model(inputs_embeds=embeds, attention_mask=attn).logits
    real = attn.bool()
    torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
    # without the mask every row takes the text weights: the visual rows' logits change
    assert not torch.allclose(unrouted[real], want[real], atol=1e-3)
    torch.testing.assert_close(unrouted[~visual & real][:3], want[~visual & real][:3], rtol=1e-5, atol=1e-5)
