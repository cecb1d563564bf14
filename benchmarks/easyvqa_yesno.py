"""Where an easy-VQA model's yes/no answers go wrong: exact match split by topic (colour / shape),
by whether the question is negated ("is there not a circle?", "is no red shape present?") and by
the right answer. A model that answers from the wording instead of the image shows it at once
(e.g. every negated question answered "yes"). The split is `eve_vlm.eval.yesno.yes_no_split`
(`make demo` prints it too); this prints it as markdown for a finished evaluation.

    python benchmarks/easyvqa_yesno.py runs/easyvqa-smollm2/eval     # an `eve eval --task easyvqa` folder
    python benchmarks/easyvqa_yesno.py demo-out/eval                 # the demo's (easyvqa-question-only)
    python benchmarks/easyvqa_yesno.py some/folder/easyvqa.json      # a results file
"""

import argparse
import json
from pathlib import Path

from eve_vlm.eval.yesno import yes_no_markdown, yes_no_split

TASKS = ("easyvqa", "easyvqa-question-only")


def results_file(path: Path) -> Path:
    """`path` itself, or the results JSON of an easy-VQA task in the folder `path`."""
    if path.is_file():
        return path
    found = [path / f"{task}.json" for task in TASKS if (path / f"{task}.json").is_file()]
    if len(found) != 1:
        raise SystemExit(f"{path}: expected one of {[f'{t}.json' for t in TASKS]}, found {[f.name for f in found]}; "
                         "give the results file itself")
    return found[0]


def breakdown(path: Path) -> str:
    with open(results_file(path)) as f:
        return yes_no_markdown(yes_no_split(json.load(f)["predictions"]))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("path", type=Path, help="output folder of `eve eval --task easyvqa` (or its results JSON)")
    print(breakdown(parser.parse_args().path))
