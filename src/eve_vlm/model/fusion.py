"""Input fusion: visual tokens take the rows of their placeholders.

The processor has already expanded every image into exactly its N placeholder ids, in image
order, so fusion never changes the sequence length: it only checks that the placeholders and
the images agree and scatters the PEL outputs into those rows.
"""

import torch

from ..errors import PlaceholderMismatchError


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of consecutive True values in a 1-D bool tensor."""
    x = row.to(torch.int8)
    edges = torch.diff(x, prepend=x.new_zeros(1), append=x.new_zeros(1))
    return ((edges == -1).nonzero() - (edges == 1).nonzero()).flatten().tolist()


def check_placeholders(visual: torch.Tensor, tokens_per_image: list[int]) -> None:
    """Every image must own a contiguous block of exactly its token count, images in order.

    Adjacent images may share one run of placeholders; a block may not span two rows.
    """
    images = iter(enumerate(tokens_per_image))
    for b, row in enumerate(visual):
        for run in _runs(row):
            while run > 0:
                i, n = next(images, (None, None))
                if i is None:
                    raise PlaceholderMismatchError(
                        f"row {b} has {run} image placeholder token(s) left over after all "
                        f"{len(tokens_per_image)} image(s) were placed; each image needs exactly its "
                        "1 + h*(w+1) tokens (let the processor expand `<image>`)"
                    )
                if n > run:
                    raise PlaceholderMismatchError(
                        f"image {i} needs {n} placeholder tokens but row {b} has a block of only {run}"
                    )
                run -= n
    left = [i for i, _ in images]
    if left:
        raise PlaceholderMismatchError(
            f"{len(tokens_per_image)} image(s) given but placeholder tokens for only "
            f"{len(tokens_per_image) - len(left)}; image(s) {left} have no placeholders"
        )


def fuse(text_embeds: torch.Tensor, visual: torch.Tensor, image_tokens: list[torch.Tensor]) -> torch.Tensor:
    """Replace the placeholder rows of `text_embeds` [B, L, D] by the visual tokens, in order."""
    check_placeholders(visual, [t.shape[0] for t in image_tokens])
    feats = torch.cat(image_tokens).to(text_embeds.dtype)
    return text_embeds.masked_scatter(visual.unsqueeze(-1), feats)
