"""Caption quality against known ground truth: what counts as a mention, recall and hallucination
on hand-written captions, and the rule fuser's captions of real easy-VQA images."""

import json

from eve_vlm.caption import run
from eve_vlm.caption.layout import LayoutExpert
from eve_vlm.caption.quality import mentions, score, truth_facts


def test_mentions():
    assert mentions('A light blue circle and two red triangles; the text "Stop 42" is written.') == {
        ("shape", "circle"), ("color", "red"), ("shape", "triangle"), ("text", "stop"), ("text", "42")}
    assert mentions("A grey square on a dark green background.") == {("color", "gray")}
    assert mentions('The word "red" in “blue” letters.') == {("text", "red"), ("text", "blue")}


def test_truth_facts():
    assert truth_facts({"image": "1.png", "color": "red", "shape": None}) == ({("color", "red")}, {"color", "text"})
    assert truth_facts({"image": "2.png", "text": "Hello 42"}) == ({("text", "hello"), ("text", "42")}, {"text"})


def write(path, records):
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


def caption(image, text, **extra):
    return {"id": image, "image": f"imgs/{image}", **extra,
            "conversations": [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": text}]}


def test_score(tmp_path):
    write(tmp_path / "truth.jsonl", [{"image": "1.png", "color": "red", "shape": "circle"},
                                     {"image": "2.png", "color": None, "shape": "triangle"},
                                     {"image": "3.png", "color": "blue", "shape": "rectangle"}])
    write(tmp_path / "caps.jsonl", [
        caption("1.png", "A red circle on a white background."),                 # 2/2, nothing invented
        caption("2.png", "A green triangle.", fallback=True),                      # colour unknown: not scored
        caption("3.png", 'A blue circle with the text "hi".'),                     # circle, "hi" invented
        {"id": "4.png", "image": "imgs/4.png", "status": "error"},                 # no truth, no caption
    ])
    s = score(str(tmp_path / "caps.jsonl"), str(tmp_path / "truth.jsonl"))
    assert (s["captions"], s["facts"], s["recalled"], s["mentions"], s["hallucinated"]) == (3, 5, 4, 6, 2)
    assert (s["recall"], s["hallucination_rate"], s["hallucinated_captions"], s["fallback"]) == (0.8, 2 / 6, 1, 1)
    write(tmp_path / "text.jsonl", [{"image": "1.png", "text": "open 7"}])
    write(tmp_path / "tcaps.jsonl", [caption("1.png", 'A red sign reads "open 1".')])
    t = score(str(tmp_path / "tcaps.jsonl"), str(tmp_path / "text.jsonl"))
    assert (t["recall"], t["hallucination_rate"]) == (0.5, 0.5)  # colours are not scored here


def test_rule_captions_of_easyvqa_images_are_faithful(tmp_path):
    from eve_vlm.data.easyvqa import _by_image, caption_records

    by_image, paths = _by_image("test")
    first = dict(sorted(by_image.items())[:40])
    with open(tmp_path / "in.jsonl", "w") as f:
        f.writelines(json.dumps({"id": str(i), "image": paths[i]}) + "\n" for i in first)
    truth = [{**r, "image": paths[int(r["image"][:-4])]} for r in caption_records("test", first)]
    write(tmp_path / "truth.jsonl", truth)
    run([str(tmp_path / "in.jsonl")], str(tmp_path / "caps.jsonl"), [LayoutExpert()], progress=False)
    s = score(str(tmp_path / "caps.jsonl"), str(tmp_path / "truth.jsonl"))
    assert s["captions"] == 40 and s["recall"] == 1.0 and s["hallucination_rate"] == 0.0
