"""Training with independent turns end to end: a record's questions train as single-question rows
(no question sees another's answer) and the run counts records, rows' tokens and FLOPs."""

import json

import pytest

from eve_vlm.train import train
from eve_vlm.train.metrics import read_metrics
from tiny import base_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def two_question_records(toy, path):  # noqa: F811
    """The toy captions' images, each with two questions in one record."""
    with open(toy["data"]) as f, open(path, "w") as out:
        for line in f:
            r = json.loads(line)
            color = r["conversations"][1]["value"].split()[1]
            r["conversations"] = [{"from": "human", "value": "<image>\nWhat colour is the box?"},
                                  {"from": "gpt", "value": color},
                                  {"from": "human", "value": f"Is the box {color}?"}, {"from": "gpt", "value": "yes"}]
            out.write(json.dumps(r) + "\n")
    return str(path)


def test_a_stage_trains_on_independent_turns(toy, tmp_path):  # noqa: F811
    data = two_question_records(toy, tmp_path / "qa.jsonl")
    runs = {}
    for turns in ("independent", "joint"):
        recipe = base_recipe(toy, tmp_path / turns, source="eve", **{
            "data.sources.0.path": data, "data.template": "eve", "data.turns": turns,
            "train.groups": ["pel", "vision", "llm"], "train.steps": 2})
        runs[turns] = (train(recipe), read_metrics(str(tmp_path / turns)))
    (ind, ind_rows), (joint, joint_rows) = runs["independent"], runs["joint"]
    assert ind["completed"] and ind["samples"] == joint["samples"] == 8  # records, both ways
    # two rows per record, each repeating the system prompt and the image: more tokens than the
    # joint conversations, for fewer FLOPs than those rows would cost without the shared prefix
    assert ind["tokens"] > joint["tokens"]
    assert all(r["flops"] > 0 for r in ind_rows if "loss" in r)
