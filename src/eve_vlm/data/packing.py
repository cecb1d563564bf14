"""Sequence packing: several samples per row, no padding between them.

Rows carry `position_ids` that restart at 0 for every sample and no attention_mask; transformers'
`create_causal_mask` then finds the sample boundaries from the position jumps and keeps attention
inside each sample. The model must be called with `use_cache=False`: with a cache (the config
default) the packed-sequence detection is skipped and samples silently attend to each other.
"""

import torch

from eve_vlm.data.bad import BadEvent
from eve_vlm.data.collate import meta, round_up
from eve_vlm.processing.chat import IGNORE_INDEX


def first_fit(lengths: list[int], max_length: int) -> list[list[int]]:
    """First-fit decreasing: sample indices per row, each row's total length <= max_length."""
    rows, room = [], []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_length - lengths[i])
    return rows


def pack(lengths: list[int], max_length: int) -> list[list[int]]:
    """As few rows as first fit needs, but balanced: first fit fills rows front to back and leaves
    the last one short, while a batch is as wide as its longest row. Dealing the samples out
    longest first to the emptiest row usually gives the same row count at a smaller width."""
    rows = first_fit(lengths, max_length)
    balanced, totals = [[] for _ in rows], [0] * len(rows)
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = totals.index(min(totals))
        balanced[r].append(i)
        totals[r] += lengths[i]
    widest = max((sum(lengths[i] for i in row) for row in rows), default=0)
    return balanced if max(totals, default=0) < widest else rows


class PackingCollator:
    """Packs a list of encoded samples into as few rows of at most `max_length` tokens as fit.
    A sample longer than `max_length` is dropped and reported as a too_long skip."""

    def __init__(self, max_length: int, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.max_length, self.pad_token_id = max_length, pad_token_id
        self.pad_to_multiple_of = pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        too_long = [BadEvent("too_long", s.get("id"), f"too_long: {len(s['input_ids'])} tokens "
                             f"do not fit a packed row of {self.max_length}") for s in samples
                    if len(s["input_ids"]) > self.max_length]
        samples = [s for s in samples if len(s["input_ids"]) <= self.max_length]
        rows = [[samples[i] for i in row] for row in pack([len(s["input_ids"]) for s in samples], self.max_length)]
        width = round_up(max((sum(len(s["input_ids"]) for s in row) for row in rows), default=0),
                         self.pad_to_multiple_of)
        input_ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        position_ids = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            start = 0
            for s in row:
                n = len(s["input_ids"])
                input_ids[r, start:start + n] = s["input_ids"]
                labels[r, start:start + n] = s["labels"]
                # an unpacked sample never predicts its first token; packed, the previous sample would
                labels[r, start] = IGNORE_INDEX
                position_ids[r, start:start + n] = torch.arange(n)
                start += n
            # the padding tail restarts at 0 too, so it is a segment of its own
            position_ids[r, start:] = torch.arange(width - start)
        ordered = [s for row in rows for s in row]  # images must follow the flattened row order
        batch_meta = meta(ordered, too_long)
        batch_meta["seq_lens"] = [[len(s["input_ids"]) for s in row] for row in rows]
        return {"input_ids": input_ids, "attention_mask": None, "labels": labels,
                "position_ids": position_ids,
                "pixel_values": [p for s in ordered for p in s["pixel_values"]], "meta": batch_meta}
