"""How fast can a patch-embedding layer learn an easy-VQA concept on its own?

Before spending CPU-hours on a stage, this trains a fresh PEL (the model's own class) with a
small head on the training images' labels (shape or colour, from the caption records) and prints
test accuracy every few steps. The head is either a mean over the patch tokens + linear (what a
single token's features carry) or a 2-layer transformer with learned positions over all tokens
(what their arrangement carries). No LLM: it bounds how much signal the PEL can pick up per step,
it does not predict the VLM's accuracy.

    python -m eve_vlm.data.easyvqa data/easyvqa                 # once
    python benchmarks/probe_pel.py --label shape --max-size 128 --head mean --steps 1000
"""

import argparse
import datetime
import json
import time
from pathlib import Path

import torch
from machine import machine, report
from torch import nn
from tqdm import tqdm

from eve_vlm.model.patch_embed import PatchEmbedding, num_visual_tokens
from eve_vlm.processing.image import EveImageProcessor, load_image

HERE = Path(__file__).resolve().parent


def load_split(root: Path, split: str, label: str, processor, limit: int | None):
    """Stacked normalized images and class indices of the caption records whose label is known."""
    records = [r for r in map(json.loads, open(root / f"{split}_captions.jsonl")) if r.get(label)][:limit]
    classes = sorted({r[label] for r in records})
    images = [load_image(root / split / "images" / r["image"]) for r in tqdm(records, desc=f"{split} images")]
    pixels = torch.stack(processor(images)["pixel_values"])
    return pixels, torch.tensor([classes.index(r[label]) for r in records]), classes


class Probe(nn.Module):
    def __init__(self, head: str, num_tokens: int, num_classes: int, width: int = 576, hidden: int = 128):
        super().__init__()
        self.pel, self.head = PatchEmbedding(width), head
        if head == "mean":
            self.out = nn.Linear(width, num_classes)
        else:
            self.proj = nn.Linear(width, hidden)
            self.pos = nn.Parameter(torch.randn(num_tokens, hidden) * 0.02)
            layer = nn.TransformerEncoderLayer(hidden, 4, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.out = nn.Linear(hidden, num_classes)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        tokens = torch.stack(self.pel(list(pixels)))
        if self.head == "mean":
            return self.out(tokens[:, 1:].mean(1))  # patch and split tokens; not the untrained CLS alone
        return self.out(self.encoder(self.proj(tokens) + self.pos)[:, 0])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=Path("data/easyvqa"))
    p.add_argument("--label", choices=("shape", "color"), default="shape")
    p.add_argument("--max-size", type=int, default=128, help="area budget, as the recipes' data.max_size")
    p.add_argument("--head", choices=("mean", "transformer"), default="mean")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--every", type=int, default=100, help="evaluate every N steps")
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    torch.manual_seed(args.seed)
    processor = EveImageProcessor(max_size=args.max_size)
    train_x, train_y, classes = load_split(args.data, "train", args.label, processor, None)
    test_x, test_y, _ = load_split(args.data, "test", args.label, processor, args.test_limit)
    num_tokens = num_visual_tokens(*train_x.shape[-2:])
    probe = Probe(args.head, num_tokens, len(classes))
    opt = torch.optim.AdamW(probe.parameters(), lr=args.lr)
    curve, start = [], time.perf_counter()
    for step in tqdm(range(1, args.steps + 1), desc="probe"):
        idx = torch.randint(0, len(train_x), (args.batch,))
        loss = nn.functional.cross_entropy(probe(train_x[idx]), train_y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % args.every == 0 or step == args.steps:
            with torch.no_grad():
                acc = sum((probe(x).argmax(-1) == y).sum().item()
                          for x, y in zip(test_x.split(128), test_y.split(128))) / len(test_y)
            curve.append((step, acc))
            tqdm.write(f"step {step}: test accuracy {100 * acc:.1f} % ({time.perf_counter() - start:.0f} s)")

    lines = [
        f"## probe_pel.py — {datetime.date.today()}", "",
        f"Machine: {machine()}. A fresh PEL + {args.head} head learns easy-VQA {args.label} "
        f"({len(classes)} classes, chance {100 / len(classes):.0f} %) from {len(train_x)} training images at "
        f"{args.max_size}² ({test_x.shape[-2]}x{test_x.shape[-1]} px, {num_tokens} tokens); AdamW lr "
        f"{args.lr:g}, batch {args.batch}; accuracy on {len(test_y)} test images.", "",
        "| step | " + " | ".join(str(s) for s, _ in curve) + " |",
        "| --- | " + " | ".join("---:" for _ in curve) + " |",
        "| test accuracy % | " + " | ".join(f"{100 * a:.1f}" for _, a in curve) + " |", "",
    ]
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
