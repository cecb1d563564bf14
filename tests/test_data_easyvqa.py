import json
import os
from collections import Counter

import pytest

pytest.importorskip("easy_vqa")

from eve_vlm.data.easyvqa import COLORS, SHAPES, export_easyvqa, facts, negated  # noqa: E402
from eve_vlm.data.llava import LlavaDataset, load_image  # noqa: E402


def read(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("easyvqa")
    counts = export_easyvqa(str(out))
    return out, counts


def test_qa_export_covers_every_question_once(exported):
    out, counts = exported
    for split, n_images, n_questions in (("train", 4000, 38575), ("test", 1000, 9673)):
        qa = read(out / f"{split}_qa.jsonl")
        assert len(qa) == n_images == len(os.listdir(out / split / "images"))
        turns = [t for r in qa for t in r["conversations"]]
        assert sum(t["from"] == "gpt" for t in turns) == n_questions
        assert all(len(r["question_type"]) * 2 == len(r["conversations"]) for r in qa)
        assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in qa)
        assert sum("<image>" in t["value"] for t in turns) == n_images
    types = Counter(t for r in read(out / "test_qa.jsonl") for t in r["question_type"])
    assert set(types) == {"color", "shape", "yes_no_color", "yes_no_shape"}
    assert types["yes_no_color"] + types["yes_no_shape"] == 7136  # the data set's README


def test_captions_agree_with_the_answers(exported):
    out, _ = exported
    caps = {r["image"]: r for r in read(out / "train_captions.jsonl")}
    assert len(caps) == 4000
    known = [r for r in caps.values() if r["color"] and r["shape"]]
    assert len(known) > 0.85 * len(caps)
    assert all(f"{r['color']} {r['shape']}" in r["conversations"][1]["value"] for r in known)
    assert len({r["conversations"][1]["value"].replace(f"{r['color']} {r['shape']}", "X") for r in known}) >= 5
    for r in read(out / "train_qa.jsonl")[:300]:  # every direct answer matches the caption's facts
        cap = caps[r["image"]]
        for q, a in zip(r["conversations"][::2], r["conversations"][1::2]):
            if a["value"] in COLORS and cap["color"]:
                assert a["value"] == cap["color"], (q, cap)
            if a["value"] in SHAPES and cap["shape"]:
                assert a["value"] == cap["shape"], (q, cap)


def test_facts_use_negations_and_elimination():
    assert facts(["is there not a blue shape?", "what shape is in the image?"], ["no", "circle"]) == ("blue", "circle")
    assert facts(["is there a circle?", "is there not a triangle?"], ["no", "yes"]) == (None, "rectangle")


def test_one_question_per_record_is_deterministic_and_loads(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    export_easyvqa(str(a), splits=("test",), questions_per_record=1, seed=3)
    export_easyvqa(str(b), splits=("test",), questions_per_record=1, seed=3)
    assert (a / "test_qa.jsonl").read_bytes() == (b / "test_qa.jsonl").read_bytes()
    assert (a / "test_captions.jsonl").read_bytes() == (b / "test_captions.jsonl").read_bytes()
    ds = LlavaDataset(str(a / "test_qa.jsonl"), str(a / "test" / "images"))
    assert len(ds) == 9673
    rec = ds[17]
    assert isinstance(rec["question_type"], str) and rec["answer"] == rec["conversations"][1]["value"]
    assert load_image(rec["images"][0]).size == (64, 64)


def test_balanced_yes_no_records_answer_from_the_facts_and_carry_no_prior(exported):
    out, counts = exported
    assert not (out / "test_qa_balanced.jsonl").exists()  # the test split stays the original
    caps = {r["image"]: r for r in read(out / "train_captions.jsonl")}
    originals = {r["image"]: r for r in read(out / "train_qa.jsonl")}
    records = read(out / "train_qa_balanced.jsonl")
    assert counts[str(out / "train_qa_balanced.jsonl")] == len(records) > 3900
    by_form, repeats = Counter(), Counter()
    for r in records:
        cap, original = caps[r["image"]], originals[r["image"]]
        assert len(r["conversations"]) == len(original["conversations"])  # conversation length kept
        last = {}
        for q, a, t in zip(r["conversations"][::2], r["conversations"][1::2], r["question_type"]):
            question, answer = q["value"].removeprefix("<image>\n").split("\n")[0], a["value"]
            if not t.startswith("yes_no"):
                assert answer in (cap["color"], cap["shape"]) or None in (cap["color"], cap["shape"])
                continue
            fact = cap["color"] if t == "yes_no_color" else cap["shape"]
            assert fact is not None
            named = (set(question.rstrip("?").split()) & set(COLORS + SHAPES)).pop()
            assert answer == ("yes" if (named == fact) != negated(question) else "no"), (question, answer, cap)
            form = t, negated(question)
            by_form[form + (answer,)] += 1
            if form in last:  # does an earlier answer of the same form predict this one?
                repeats[answer == last[form]] += 1
            last[form] = answer
    for t in ("yes_no_color", "yes_no_shape"):
        for neg in (False, True):
            yes, no = by_form[t, neg, "yes"], by_form[t, neg, "no"]
            assert 0.47 < yes / (yes + no) < 0.53 and yes + no > 5000, (t, neg, yes, no)
    assert 0.47 < repeats[True] / sum(repeats.values()) < 0.53, repeats
    ds = LlavaDataset(str(out / "train_qa_balanced.jsonl"), str(out / "train" / "images"))
    assert load_image(ds[5]["images"][0]).size == (64, 64)


def test_single_question_balanced_records_are_the_balanced_questions_one_per_record(exported):
    out, counts = exported
    assert not (out / "test_qa_balanced_single.jsonl").exists()
    whole, single = read(out / "train_qa_balanced.jsonl"), read(out / "train_qa_balanced_single.jsonl")
    assert counts[str(out / "train_qa_balanced_single.jsonl")] == len(single)
    pairs = lambda r: [(r["conversations"][i]["value"].removeprefix("<image>\n"), r["conversations"][i + 1]["value"])  # noqa: E731
                       for i in range(0, len(r["conversations"]), 2)]
    assert [p for r in whole for p in pairs(r)] == [p for r in single for p in pairs(r)]
    assert all(len(r["conversations"]) == 2 and r["conversations"][0]["value"].startswith("<image>\n") for r in single)
    assert all(r["answer"] == r["conversations"][1]["value"] and isinstance(r["question_type"], str) for r in single)
    assert len({r["id"] for r in single}) == len(single)


def test_open_question_records_are_the_single_records_that_name_colour_or_shape(exported):
    out, counts = exported
    single, opened = read(out / "train_qa_balanced_single.jsonl"), read(out / "train_qa_open_single.jsonl")
    assert opened == [r for r in single if r["question_type"] in ("color", "shape")]
    assert counts[str(out / "train_qa_open_single.jsonl")] == len(opened) > 8000
    assert {r["answer"] for r in opened} == set(COLORS + SHAPES)


def test_open_records_hold_each_images_open_questions(exported):
    out, counts = exported
    opened, single = read(out / "train_qa_open.jsonl"), read(out / "train_qa_open_single.jsonl")
    assert counts[str(out / "train_qa_open.jsonl")] == len(opened) == len({r["image"] for r in single})
    pairs = lambda r: sorted((r["image"], r["conversations"][i]["value"].removeprefix("<image>\n"),  # noqa: E731
                              r["conversations"][i + 1]["value"]) for i in range(0, len(r["conversations"]), 2))
    assert sorted(p for r in opened for p in pairs(r)) == sorted(p for r in single for p in pairs(r))
    assert all(r["conversations"][0]["value"].startswith("<image>\n") for r in opened)
    assert all("<image>" not in t["value"] for r in opened for t in r["conversations"][1:])
