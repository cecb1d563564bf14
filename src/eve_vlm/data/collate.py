"""Batching encoded samples: right padding for the model's (input_ids, attention_mask, labels,
pixel_values) contract. Everything that is not a model input goes to `batch["meta"]`."""

import torch

from eve_vlm.data.bad import BadEvent
from eve_vlm.processing.chat import IGNORE_INDEX


def round_up(n: int, multiple: int | None) -> int:
    return -(-n // multiple) * multiple if multiple else n


def meta(samples: list[dict], skipped: list[BadEvent] = ()) -> dict:
    """What the trainer needs besides the model inputs: sample ids (for logs), the bad samples
    skipped on the way (for BadSampleCounter.update) and the visual token counts."""
    return {"ids": [s.get("id") for s in samples],
            "skipped": [e for s in samples for e in s.get("skipped", ())] + list(skipped),
            "num_image_tokens": [n for s in samples for n in s["num_image_tokens"]]}


def rows(samples: list[dict]) -> list[tuple[int, dict]]:
    """(sample index, row) per model row: a sample encoded with independent turns (`rows`) gives
    one row per question, each with the sample's images."""
    return [(i, r) for i, s in enumerate(samples) for r in s.get("rows", [s])]


class Collator:
    """Right-pads a list of encoded samples into one batch. `pixel_values` stays a list, in the
    order the images appear in the flattened batch, which is the order the model fills the
    placeholders in. The rows of a sample with independent turns are consecutive; `meta["groups"]`
    gives each row's sample, so rows that share their images can share their prefix
    (`eve_vlm.model.prefix`)."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        flat = rows(samples)
        length = round_up(max(len(r["input_ids"]) for _, r in flat), self.pad_to_multiple_of)
        input_ids = torch.full((len(flat), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(flat), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(flat), length), dtype=torch.long)
        for row, (_, r) in enumerate(flat):
            n = len(r["input_ids"])
            input_ids[row, :n] = r["input_ids"]
            labels[row, :n] = r["labels"]
            attention_mask[row, :n] = 1
        out_meta = meta(samples)
        if any("rows" in s for s in samples):
            out_meta["groups"] = [i for i, _ in flat]
            out_meta["group_images"] = [len(s["pixel_values"]) for s in samples]
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "pixel_values": [p for i, _ in flat for p in samples[i]["pixel_values"]],
                "meta": out_meta}
