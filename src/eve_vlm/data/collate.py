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


class Collator:
    """Right-pads a list of encoded samples into one batch. `pixel_values` stays a list, in the
    order the images appear in the flattened batch, which is the order the model fills the
    placeholders in."""

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None):
        self.pad_token_id, self.pad_to_multiple_of = pad_token_id, pad_to_multiple_of

    def __call__(self, samples: list[dict]) -> dict:
        length = round_up(max(len(s["input_ids"]) for s in samples), self.pad_to_multiple_of)
        input_ids = torch.full((len(samples), length), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(samples), length), IGNORE_INDEX, dtype=torch.long)
        attention_mask = torch.zeros((len(samples), length), dtype=torch.long)
        for row, s in enumerate(samples):
            n = len(s["input_ids"])
            input_ids[row, :n] = s["input_ids"]
            labels[row, :n] = s["labels"]
            attention_mask[row, :n] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
                "pixel_values": [p for s in samples for p in s["pixel_values"]],
                "meta": meta(samples)}
