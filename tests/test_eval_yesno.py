"""The easy-VQA yes/no split (eval.yesno) and the benchmark script that prints it."""

import importlib.util
import json
from pathlib import Path

import easy_vqa
import pytest

from eve_vlm.data.easyvqa import negated
from eve_vlm.eval.yesno import HEADER, yes_no_markdown, yes_no_rows, yes_no_split

spec = importlib.util.spec_from_file_location(
    "easyvqa_yesno", Path(__file__).parent.parent / "benchmarks" / "easyvqa_yesno.py")
easyvqa_yesno = importlib.util.module_from_spec(spec)
spec.loader.exec_module(easyvqa_yesno)


def row(question, truth, right, error=None):
    return {"id": question, "question": question, "answers": [truth], "error": error,
            "scores": {"exact_match": float(right)}}


HAND = [
    row("is there a red shape?", "yes", True),  # colour, plain, yes
    row("is there a red shape?", "yes", False),
    row("is a blue shape present?", "yes", True),
    row("does the image contain a green shape?", "no", True),  # colour, plain, no
    row("is no red shape present?", "no", True),  # colour, negated, no
    row("is there not a gray shape in the image?", "yes", False, error="timeout"),  # colour, negated, yes; failed
    row("is there a circle?", "no", True),  # shape, plain, no
    row("is there not a circle?", "yes", False),  # shape, negated, yes
    row("does the image not contain a triangle?", "yes", True),
    row("what is the red shape?", "circle", True),  # not yes/no: left out
    row("what color is the shape?", "red", False),
]


def test_counts_by_topic_wording_and_right_answer():
    cells = yes_no_split(HAND)
    got = {(c["topic"], c["negated"], c["truth"]): (c["right"], c["count"]) for c in cells}
    assert got == {
        ("color", False, "yes"): (2, 3), ("color", False, "no"): (1, 1),
        ("color", True, "yes"): (0, 1), ("color", True, "no"): (1, 1),
        ("shape", False, "yes"): (0, 0), ("shape", False, "no"): (1, 1),
        ("shape", True, "yes"): (1, 2), ("shape", True, "no"): (0, 0),
    }
    assert [(c["topic"], c["negated"], c["truth"]) for c in cells][:3] == [
        ("color", False, "yes"), ("color", False, "no"), ("color", True, "yes")]
    assert all(isinstance(c["right"], int) for c in cells)
    json.dumps(cells)  # plain data, storable next to the results


def test_rows_and_markdown():
    rows = yes_no_rows(yes_no_split(HAND))
    assert rows == [
        ("colour, plain", "2 / 3 (67 %)", "1 / 1 (100 %)"),
        ("colour, negated", "0 / 1 (0 %)", "1 / 1 (100 %)"),
        ("shape, plain", "0 / 0", "1 / 1 (100 %)"),
        ("shape, negated", "1 / 2 (50 %)", "0 / 0"),
    ]
    md = yes_no_markdown(yes_no_split(HAND)).splitlines()
    assert md[0] == "| " + " | ".join(HEADER) + " |"
    assert md[2] == "| colour, plain | 2 / 3 (67 %) | 1 / 1 (100 %) |"
    assert len(md) == 6


def test_a_model_answering_from_the_wording_gets_one_column_wrong():
    """On the real test questions: 'no' to every plain question, 'yes' to every negated one."""
    questions, answers, _ = easy_vqa.get_test_questions()
    rows = [row(q, a, a == ("yes" if negated(q) else "no")) for q, a in zip(questions[:1000], answers[:1000])]
    for cell in yes_no_split(rows):
        assert cell["count"] > 0
        assert cell["right"] == (cell["count"] if (cell["truth"] == "yes") == cell["negated"] else 0)


def test_benchmark_reads_a_results_file_or_an_eval_folder(tmp_path):
    (tmp_path / "easyvqa-question-only.json").write_text(json.dumps({"predictions": HAND}))
    expected = yes_no_markdown(yes_no_split(HAND))
    assert easyvqa_yesno.breakdown(tmp_path) == expected
    assert easyvqa_yesno.breakdown(tmp_path / "easyvqa-question-only.json") == expected
    with pytest.raises(SystemExit, match="expected one of"):
        easyvqa_yesno.breakdown(tmp_path / "nothing-here")
