"""A prefix that every row of a batch starts with is computed once and shared.

Chat prompts of one template begin with the same tokens (the official EVEv2 template puts a
28-token system prompt before every conversation: half of a short VQA sample). Causal attention
makes those positions' keys and values independent of what follows, so they are computed for
one row, repeated to the batch in the KV cache, and the rows run from where they differ. The
result is the same function: in training the gradient of every row flows back through the
repeat into the one prefix computation, exactly as it would into B identical copies.

Only text is shared (the prefix ends before the first image placeholder), so no pixels are
involved, and only where nothing in the prefix is supervised.
"""

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
