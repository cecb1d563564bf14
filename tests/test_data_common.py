"""Shared helpers for the data tests: a tiny stand-in for EveProcessor and file writers."""

import json
import os

import torch

from eve_vlm.errors import BadSampleError

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "bad_data")
PAD, END, IMAGE = 0, 2, 3


class FakeProcessor:
    """EveProcessor.encode_conversation's contract with byte-level "tokens": N = 1 + h(w+1)
    placeholders per image (32 px patches), labels on the answers and their end token."""

    image_token_id, pad_token_id = IMAGE, PAD

    @staticmethod
    def grid(image) -> tuple[int, int]:
        return max(round(image.height / 32), 1), max(round(image.width / 32), 1)

    def encode_conversation(self, conversation, images, template=None, sample_id=None,
                            max_length=None, truncation="drop", turns="joint"):
        markers = sum(t["value"].count("<image>") for t in conversation)
        if markers != len(images):
            raise BadSampleError("placeholder_mismatch", f"{markers} markers, {len(images)} images", sample_id)
        ids, labels, counts, k = [], [], [], 0
        for turn in conversation:
            pieces = turn["value"].split("<image>")
            for j, piece in enumerate(pieces):
                toks = [10 + b % 90 for b in piece.encode()]
                if turn["from"] == "gpt":
                    toks.append(END)
                ids += toks
                labels += toks if turn["from"] == "gpt" else [-100] * len(toks)
                if j < len(pieces) - 1:
                    h, w = self.grid(images[k])
                    counts.append(1 + h * (w + 1))
                    ids += [IMAGE] * counts[-1]
                    labels += [-100] * counts[-1]
                    k += 1
        if max_length is not None and len(ids) > max_length:
            raise BadSampleError("too_long", f"{len(ids)} tokens > {max_length}", sample_id)
        pixels = [torch.full((3, 32 * h, 32 * w), 0.5) for h, w in map(self.grid, images)]
        return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels),
                "pixel_values": pixels, "num_image_tokens": counts}


def write_jsonl(path, records) -> str:
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
    return str(path)


def text_record(i: int, words: int = 3) -> dict:
    return {"id": f"r{i}", "conversations": [{"from": "human", "value": f"question {i}"},
                                             {"from": "gpt", "value": " ".join(["answer"] * words)}]}
