"""A prefix that every row of a batch starts with is computed once and shared.

Chat prompts of one template begin with the same tokens (the official EVEv2 template puts a
28-token system prompt before every conversation: half of a short VQA sample). Causal attention
makes those positions' keys and values independent of what follows, so they are computed for
one row, repeated to the batch in the KV cache, and the rows run from where they differ. The
result is the same function: in training the gradient of every row flows back through the
repeat into the one prefix computation, exactly as it would into B identical copies.

Across a batch only text is shared (the prefix ends before the first image placeholder), and
only where nothing in the prefix is supervised. Rows that hold the same images (the questions of
one record trained as independent turns, `meta["groups"]`) share more: each group's prefix, its
images included, runs once, and its rows continue from it (`GroupedPrefix`); each row still sees
exactly its own single-question sequence, positions included.
"""

import itertools

import torch
from transformers import DynamicCache

from ..processing.chat import IGNORE_INDEX

MIN_SHARED = 8  # below this the extra forward costs more than it saves


def common_prefix(rows: list[list[int]], image_token_id: int, limit: int | None = None) -> int:
    """Length of the text prefix all `rows` start with (before any image placeholder, at most
    `limit`); 0 when shorter than MIN_SHARED or when there is a single row."""
    if len(rows) < 2:
        return 0
    first, n = rows[0], min(map(len, rows))
    if limit is not None:
        n = min(n, limit)
    p = 0
    while p < n and first[p] != image_token_id and all(r[p] == first[p] for r in rows):
        p += 1
    return p if p >= MIN_SHARED else 0


def shared_cache(model, prefix_ids: torch.Tensor, batch: int) -> DynamicCache:
    """KV cache of `prefix_ids` [1, P], computed once and repeated to `batch` rows."""
    cache = model.model(input_ids=prefix_ids, use_cache=True).cache
    cache.batch_repeat_interleave(batch)
    return cache


def batch_shared_length(batch: dict, image_token_id: int) -> int:
    """The prefix a right-padded (not packed) training batch can share: before the first image
    placeholder and before the first position whose next token is supervised."""
    if batch.get("position_ids") is not None or batch.get("attention_mask") is None:
        return 0
    supervised = (batch["labels"][:, 1:] != IGNORE_INDEX).any(0).nonzero()
    limit = int(supervised[0]) if len(supervised) else None
    return common_prefix(batch["input_ids"].tolist(), image_token_id, limit)


def group_prefixes(batch: dict, image_token_id: int) -> list[int] | None:
    """Rows that share their images (`meta["groups"]` of a right-padded batch): per group, the
    prefix all its rows start with, before the first position whose next token is supervised.
    None when there are no groups or a group's prefix does not hold all of its rows' image
    placeholders (the images could not run in the prefix alone)."""
    groups = batch.get("meta", {}).get("groups")
    if groups is None or batch.get("position_ids") is not None or batch.get("attention_mask") is None:
        return None
    ids, labels, lens = batch["input_ids"], batch["labels"], batch["attention_mask"].sum(1)
    lengths, start = [], 0
    for g in range(groups[-1] + 1):
        end = start + groups.count(g)
        rows = ids[start:end]
        supervised = (labels[start:end, 1:] != IGNORE_INDEX).any(0).nonzero()
        limit = min(int(supervised[0]) if len(supervised) else ids.shape[1], int(lens[start:end].min()))
        same = (rows[:, :limit] == rows[:1, :limit]).all(0)
        p = int(same.long().cumprod(0).sum())
        images = ids[start:end] == image_token_id
        if p == 0 or images[:, p:].any():
            return None
        lengths.append(p)
        start = end
    return lengths


class GroupedPrefix:
    """A batch split into one prefix row per group and one branch row per row: the branch of row
    r is its tokens after its group's prefix, at positions continuing the prefix, attending to
    the prefix (padding masked) and causally to itself."""

    def __init__(self, batch: dict, lengths: list[int], image_token_id: int):
        groups = torch.tensor(batch["meta"]["groups"])
        ids, labels, lens = batch["input_ids"], batch["labels"], batch["attention_mask"].sum(1)
        plen = torch.tensor(lengths)
        first = torch.searchsorted(groups, torch.arange(len(lengths)))
        width = max(lengths)
        pad = int(image_token_id == 0)  # any token but the image placeholder: padding is masked
        self.groups, self.lengths = groups, lengths
        self.prefix_mask = (torch.arange(width) < plen[:, None]).long()
        self.prefix_ids = ids[first, :width].masked_fill(self.prefix_mask == 0, pad)
        per_row = [batch["meta"]["group_images"][g] for g in groups.tolist()]
        starts = [0, *itertools.accumulate(per_row)]
        self.prefix_pixels = [p for r in first.tolist() for p in batch["pixel_values"][starts[r]:starts[r + 1]]]
        rest = lens - plen[groups]
        n = int(rest.max())
        self.ids = torch.full((len(groups), n), pad, dtype=torch.long)
        self.labels = torch.full((len(groups), n), IGNORE_INDEX, dtype=torch.long)
        for r, (p, k) in enumerate(zip(plen[groups].tolist(), rest.tolist())):
            self.ids[r, :k] = ids[r, p:p + k]
            self.labels[r, :k] = labels[r, p:p + k]
        branch_mask = (torch.arange(n) < rest[:, None]).long()
        self.attention_mask = torch.cat([self.prefix_mask[groups], branch_mask], 1)
        self.position_ids = plen[groups][:, None] + torch.arange(n)

    def cache(self, model, device) -> DynamicCache:
        """The prefixes' KV cache (images included), computed once per group, one row per branch."""
        cache = model.model(input_ids=self.prefix_ids.to(device), attention_mask=self.prefix_mask.to(device),
                            pixel_values=[p.to(device) for p in self.prefix_pixels] or None, use_cache=True).cache
        cache.batch_select_indices(self.groups.to(device))
        return cache
