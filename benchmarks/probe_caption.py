"""Does a trained model see what its captions say? A likelihood probe for models that cannot
answer questions yet (stage 1 / 2.1 models, trained on captions only).

For each easy-VQA test caption that names the shape (or colour), the caption is scored once per
possible label word, the true one swapped for each in turn; the model "chooses" the label whose
caption has the lowest summed next-token loss. Accuracy far above chance means the visual tokens
carry the concept; chance means they do not, whatever the caption loss says.

    python benchmarks/probe_caption.py --model runs/easyvqa-smollm2/stage1/model --label shape --limit 300
"""

import argparse
import collections
import datetime
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from machine import machine, report
from tqdm import tqdm

from eve_vlm.data.collate import Collator
from eve_vlm.data.easyvqa import COLORS, SHAPES
from eve_vlm.infer import load
from eve_vlm.processing.image import load_image

HERE = Path(__file__).resolve().parent


def caption_losses(model, processor, image, conversations: list[list[dict]]) -> list[float]:
    """Summed next-token loss of each caption (same image), one padded batch."""
    samples = [processor.encode_conversation(c, [image], template="plain") for c in conversations]
    batch = Collator(processor.tokenizer.pad_token_id or 0)(samples)
    labels = batch["labels"]
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       pixel_values=batch["pixel_values"]).logits[:, :-1]
    ce = F.cross_entropy(logits.transpose(1, 2).float(), labels[:, 1:], ignore_index=-100, reduction="none")
    return ce.sum(1).tolist()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="a saved eve model folder")
    p.add_argument("--data", type=Path, default=Path("data/easyvqa"))
    p.add_argument("--label", choices=("shape", "color"), default="shape")
    p.add_argument("--limit", type=int, default=300, help="test captions to score")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()

    model, processor = load(args.model, device="cpu")
    model.eval()
    words = SHAPES if args.label == "shape" else COLORS
    records = [r for r in map(json.loads, open(args.data / "test_captions.jsonl")) if r.get(args.label)]
    records = records[:args.limit]
    confusion = collections.Counter()
    for r in tqdm(records, desc="captions"):
        truth = r[args.label]
        caption = r["conversations"][1]["value"]
        options = [re.sub(rf"\b{truth}\b", w, caption) for w in words]
        convs = [[r["conversations"][0], {"from": "gpt", "value": o}] for o in options]
        losses = caption_losses(model, processor, load_image(args.data / "test" / "images" / r["image"]), convs)
        confusion[truth, words[min(range(len(words)), key=losses.__getitem__)]] += 1

    right = sum(n for (t, c), n in confusion.items() if t == c)
    lines = [
        f"## probe_caption.py — {datetime.date.today()}", "",
        f"Machine: {machine()}. Model `{args.model}`; {len(records)} easy-VQA test captions naming the "
        f"{args.label}: the caption with the true word vs each other word ({len(words)} options, chance "
        f"{100 / len(words):.0f} %). **{100 * right / len(records):.1f} %** chosen right.", "",
        "| true \\ chosen | " + " | ".join(words) + " |",
        "| --- | " + " | ".join("---:" for _ in words) + " |",
        *(f"| {t} | " + " | ".join(str(confusion[t, c]) for c in words) + " |" for t in words), "",
    ]
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
