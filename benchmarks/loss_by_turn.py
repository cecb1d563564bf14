"""Held-out answer loss by turn of a multi-turn conversation. A model that answers later turns
from the earlier answers instead of the image (a pattern learnable from synthetic training
conversations) shows a low loss at turn 1 and a high one after; one that looks at the image is
flat. Uses a recipe's held-out set (its `eval.sources`) and data settings.

    python benchmarks/loss_by_turn.py --model runs/easyvqa-smollm2/stage3/model \
        --recipe recipes/easyvqa-smollm2/stage3.yaml --limit 64
"""

import argparse
import collections

import torch
import torch.nn.functional as F
from transformers import AutoProcessor

from eve_vlm.model import EveForConditionalGeneration
from eve_vlm.processing.chat import IGNORE_INDEX
from eve_vlm.train.data import build_eval_data
from eve_vlm.train.recipe import load_recipe
from eve_vlm.train.trainer import model_inputs


def loss_by_turn(model, data) -> dict[int, list[float]]:
    """{turn (1-based): [loss of each answer token of that turn]} over the batches of `data`."""
    out = collections.defaultdict(list)
    with torch.no_grad():
        for batch in data:
            logits = model(**model_inputs(batch, torch.device("cpu"))).logits.float()
            labels = batch["labels"]
            losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), labels[:, 1:], reduction="none",
                                     ignore_index=IGNORE_INDEX)
            supervised = labels[:, 1:] != IGNORE_INDEX
            # a turn starts where supervision switches on
            starts = supervised & ~F.pad(supervised[:, :-1], (1, 0))
            turns = starts.cumsum(1)
            for turn, loss in zip(turns[supervised].tolist(), losses[supervised].tolist()):
                out[turn].append(loss)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--recipe", required=True, help="its eval.sources are the held-out conversations")
    p.add_argument("--limit", type=int, default=64, help="conversations")
    args = p.parse_args(argv)
    recipe = load_recipe(args.recipe)
    recipe.eval.max_samples = args.limit
    processor = AutoProcessor.from_pretrained(args.model)
    model = EveForConditionalGeneration.from_pretrained(args.model).eval()
    data = build_eval_data(recipe.eval, recipe.data, processor, micro_batch=8)
    by_turn = loss_by_turn(model, data)
    print("| turn | answer tokens | mean loss |\n| ---: | ---: | ---: |")
    for turn in sorted(by_turn):
        print(f"| {turn} | {len(by_turn[turn])} | {sum(by_turn[turn]) / len(by_turn[turn]):.3f} |")


if __name__ == "__main__":
    main()
