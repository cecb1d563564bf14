"""Where an easy-VQA model's yes/no answers go wrong: exact match split by topic (colour / shape),
by whether the question is negated ("is there not a circle?", "is no red shape present?") and by
the right answer. A model that answers from the wording instead of the image shows it at once
(e.g. every negated question answered "yes").

    python benchmarks/easyvqa_yesno.py runs/easyvqa-smollm2/eval     # an `eve eval --task easyvqa` folder
"""

import argparse
import collections
import json
from pathlib import Path

from eve_vlm.data.easyvqa import negated


def breakdown(eval_dir: Path) -> str:
    predictions = {}
    with open(eval_dir / "easyvqa.predictions.jsonl") as f:
        for line in f:
            r = json.loads(line)
            predictions[r["id"]] = (r["prediction"] or "").strip().lower()
    counts = collections.Counter()
    with open(eval_dir / "data" / "easyvqa-test" / "test_qa.jsonl") as f:
        for line in f:
            r = json.loads(line)
            if r["id"] not in predictions or r["answer"] not in ("yes", "no"):
                continue
            question = r["conversations"][0]["value"].removeprefix("<image>\n")
            key = (r["question_type"].removeprefix("yes_no_"), negated(question), r["answer"])
            counts[key + (predictions[r["id"]] == r["answer"],)] += 1
    rows = ["| yes/no questions | right answer yes | right answer no |", "| --- | ---: | ---: |"]
    for topic in ("color", "shape"):
        for neg in (False, True):
            cells = []
            for answer in ("yes", "no"):
                right, wrong = counts[(topic, neg, answer, True)], counts[(topic, neg, answer, False)]
                cells.append(f"{right} / {right + wrong} ({100 * right / max(right + wrong, 1):.0f} %)")
            rows.append(f"| {topic}, {'negated' if neg else 'plain'} | {' | '.join(cells)} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("eval_dir", type=Path, help="output folder of `eve eval --task easyvqa`")
    print(breakdown(parser.parse_args().eval_dir))
