"""easy-VQA's yes/no questions split by topic (colour / shape), by wording (plain, or negated: "is
there not a circle?", "is no red shape present?") and by the right answer.

The split shows whether the answers come from the image or from the wording: the data set's plain
colour questions are "no" 88 % of the time and its negated ones "yes", so a model that learned the
wording gets one answer column of a row right and the other wrong, while one that looks at the
image gets both right. Works on the `predictions` of `eval.runner.evaluate`'s results (each row has
"question", "answers" and per-metric "scores"), in memory or read back from `TASK.json`.
"""

from ..data.easyvqa import negated, question_type

TOPICS = ("color", "shape")
TOPIC_NAMES = {"color": "colour", "shape": "shape"}
ANSWERS = ("yes", "no")
HEADER = ("yes/no questions", "right answer yes", "right answer no")  # the benchmark's markdown header


def yes_no_split(predictions: list[dict], metric: str = "exact_match") -> list[dict]:
    """Counts per (topic, negated, right answer): a list of 8 dicts {"topic": "color" | "shape",
    "negated": bool, "truth": "yes" | "no", "right": int, "count": int}, in a fixed order (colour
    before shape, plain before negated, yes before no), cells without questions included. A
    question counts as right when its `metric` score is 1 (a failed prediction scores 0: wrong);
    rows whose right answer is not yes / no are left out."""
    cells = {(topic, neg, truth): {"topic": topic, "negated": neg, "truth": truth, "right": 0, "count": 0}
             for topic in TOPICS for neg in (False, True) for truth in ANSWERS}
    for row in predictions:
        truth = (row.get("answers") or [None])[0]
        if truth not in ANSWERS or not row.get("question"):
            continue
        question = row["question"]
        cell = cells[(question_type(question, truth).removeprefix("yes_no_"), negated(question), truth)]
        cell["count"] += 1
        cell["right"] += row["scores"][metric] == 1
    return list(cells.values())


def format_cell(cell: dict) -> str:
    """'40 / 45 (89 %)'; '0 / 0' for a cell without questions."""
    if not cell["count"]:
        return "0 / 0"
    return f"{cell['right']} / {cell['count']} ({100 * cell['right'] / cell['count']:.0f} %)"


def yes_no_rows(cells: list[dict]) -> list[tuple[str, str, str]]:
    """The split as table rows under `HEADER`: ("colour, plain", yes cell, no cell) for each topic
    and wording."""
    by_key = {(c["topic"], c["negated"], c["truth"]): c for c in cells}
    return [(f"{TOPIC_NAMES[topic]}, {'negated' if neg else 'plain'}",
             *(format_cell(by_key[(topic, neg, truth)]) for truth in ANSWERS))
            for topic in TOPICS for neg in (False, True)]


def yes_no_markdown(cells: list[dict]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "| --- | ---: | ---: |"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in yes_no_rows(cells)])
