"""Fact recall and hallucination rate of captions on data whose ground truth is known.

Truth files are the caption exports of the two synthetic data sets, matched to captions by image
file name:
- easy-VQA (`python -m eve_vlm.data.easyvqa OUT` -> OUT/test_captions.jsonl): "color" and "shape"
  of the one shape (null where the image's questions leave it open); the images hold no text.
- text-in-image (`python -m eve_vlm.data.textimage OUT` -> OUT/captions.jsonl): "text", the
  rendered words.

What a caption mentions: easy-VQA colour words ("light blue" is not "blue") and shape words
outside quotes, and the words inside double quotes as the text it says is written.

    recall         = truth facts the caption mentions / truth facts
    hallucination  = mentions the truth does not hold / mentions, over the kinds the truth
                     knows (easy-VQA: colour, shape, text; text-in-image: text)
"""

import json
import os
import re

from ..data.easyvqa import COLORS, SHAPES

MODIFIERS = {"light", "dark", "pale", "bright", "deep"}  # "light blue" names another colour
_QUOTED = re.compile(r'"([^"]*)"|“([^”]*)”')
_WORD = re.compile(r"[a-z0-9]+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def mentions(caption: str) -> set[tuple[str, str]]:
    """(kind, value) pairs: ("color", c), ("shape", s), ("text", word)."""
    found = {("text", w) for m in _QUOTED.finditer(caption) for w in words(m.group(1) or m.group(2))}
    tokens = words(_QUOTED.sub(" ", caption).replace("grey", "gray"))
    for prev, token in zip([""] + tokens, tokens):
        if token in COLORS and prev not in MODIFIERS:
            found.add(("color", token))
        singular = token[:-1] if token.endswith("s") else token
        if singular in SHAPES:
            found.add(("shape", singular))
    return found


def truth_facts(record: dict) -> tuple[set, set]:
    """(facts, scored kinds) of one truth record."""
    if "text" in record:
        return {("text", w) for w in words(str(record["text"]))}, {"text"}
    facts, kinds = set(), {"text"}  # easy-VQA images hold no text: any quoted word is invented
    for kind in ("color", "shape"):
        if record.get(kind):
            facts.add((kind, record[kind]))
            kinds.add(kind)
    return facts, kinds


def _read(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def score(captions_path: str, truth_path: str) -> dict:
    """Totals over the captions of `captions_path` that have a truth record."""
    truth = {os.path.basename(r["image"]): r for r in _read(truth_path)}
    totals = dict(captions=0, facts=0, recalled=0, mentions=0, hallucinated=0, hallucinated_captions=0, fallback=0)
    for record in _read(captions_path):
        key = os.path.basename(record.get("image") or "")
        if key not in truth or "conversations" not in record:
            continue
        facts, kinds = truth_facts(truth[key])
        said = {m for m in mentions(record["conversations"][-1]["value"]) if m[0] in kinds}
        totals["captions"] += 1
        totals["facts"] += len(facts)
        totals["recalled"] += len(facts & said)
        totals["mentions"] += len(said)
        totals["hallucinated"] += len(said - facts)
        totals["hallucinated_captions"] += bool(said - facts)
        totals["fallback"] += bool(record.get("fallback"))
    n = totals["captions"]
    return {**totals,
            "recall": totals["recalled"] / totals["facts"] if totals["facts"] else None,
            "hallucination_rate": totals["hallucinated"] / totals["mentions"] if totals["mentions"] else 0.0,
            "hallucinated_caption_share": totals["hallucinated_captions"] / n if n else None}
