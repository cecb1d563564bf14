"""Export the easy-VQA data set (pip package `easy-vqa`) to LLaVA JSONL.

easy-VQA images are 64x64 PNGs of one coloured shape (circle / rectangle / triangle, 8 colours) on
a light, slightly tinted background; each has ~10 templated questions with 13 possible answers.
QA records feed stages 2.2 / 3; caption records (one per image, written from what its questions
establish about it) feed stages 1 / 2.1. The data set's yes/no questions are lopsided (a plain
colour question is "no" 88 % of the time, a negated one "yes"), so a model can score well on them
without looking; `train_qa_balanced.jsonl` asks every training image yes/no questions that are
"yes" half of the time in every form, from the facts its questions establish. The test split is
only ever the original.

    python -m eve_vlm.data.easyvqa OUT_DIR [--questions-per-record 1] [--seed 0]
"""

import argparse
import json
import os
import random
import re
import shutil
from collections import defaultdict

from ..extras import needs
from ..processing.chat import IMAGE_MARKER

COLORS = ("red", "green", "blue", "black", "gray", "yellow", "brown", "teal")
SHAPES = ("circle", "rectangle", "triangle")
HINT = "Answer the question using a single word or phrase."  # LLaVA-1.5's short-answer prompt
CAPTIONS = (
    "A {thing} on a light background.",
    "The image shows a single {thing}.",
    "A simple drawing of a {thing}.",
    "One {thing} in front of a near-white background.",
    "A flat {thing} on a pale, almost white background.",
    "A small picture with a {thing} on a plain light backdrop.",
)


def question_type(question: str, answer: str) -> str:
    if answer in COLORS:
        return "color"
    if answer in SHAPES:
        return "shape"
    return "yes_no_color" if set(re.findall(r"\w+", question)) & set(COLORS) else "yes_no_shape"


def negated(question: str) -> bool:
    """"is there not a circle?", "is no red shape present?": the templates that flip yes and no."""
    return " not " in question or question.startswith("is no ")


def facts(questions, answers) -> tuple[str | None, str | None]:
    """(color, shape) of one image as far as its questions establish them: direct answers, the
    words of questions answered positively ("is there a red shape?" yes, "is there not a
    circle?" no), and elimination by negative answers. None where they leave it open."""
    known, ruled_out = set(), set()
    for q, a in zip(questions, answers):
        words = set(re.findall(r"\w+", q)) & set(COLORS + SHAPES)
        if a in COLORS or a in SHAPES:  # "what is the blue shape?" -> rectangle: both hold
            known |= words | {a}
        elif (a == "yes") != negated(q):
            known |= words
        else:
            ruled_out |= words

    def pick(options):
        left = [o for o in options if o in known] or [o for o in options if o not in ruled_out]
        return left[0] if len(left) == 1 else None

    return pick(COLORS), pick(SHAPES)


# the data set's yes/no templates; {} is "<colour> shape" or a shape
PLAIN = ("is there a {}?", "is a {} present?", "does the image contain a {}?", "is there a {} in the image?")
NEGATED = ("is there not a {}?", "is no {} present?", "does the image not contain a {}?",
           "is there not a {} in the image?")


def caption(color: str | None, shape: str | None, rng: random.Random) -> str:
    thing = " ".join(w for w in (color, shape or "shape") if w)
    return rng.choice(CAPTIONS).format(thing=thing)


def _by_image(split: str):
    with needs("eval", "the easy-VQA data set"):
        import easy_vqa

    questions, answers, image_ids = getattr(easy_vqa, f"get_{split}_questions")()
    by_image = defaultdict(list)
    for q, a, i in zip(questions, answers, image_ids):
        by_image[i].append((q, a))
    return by_image, getattr(easy_vqa, f"get_{split}_image_paths")()


def _write_jsonl(path: str, records) -> int:
    n = 0
    with open(path, "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
            n += 1
    return n


def _turns(qas, suffix: str) -> list[dict]:
    """LLaVA turns for (question, answer) pairs about one image, the image placeholder first."""
    turns = []
    for j, (q, a) in enumerate(qas):
        turns += [{"from": "human", "value": (IMAGE_MARKER + "\n" if j == 0 else "") + q + suffix},
                  {"from": "gpt", "value": a}]
    return turns


def _chunks(split: str, image_id, qas, k: int | None, suffix: str, name: str = "{image}-{chunk}"):
    """Records of one image: all its (question, answer) pairs as turns, or chunks of `k`; ids are
    `easyvqa-{split}-` + `name`. `question_type` is a string for one-question records, else a list
    with one entry per question."""
    k = k or len(qas)
    for c in range(0, len(qas), k):
        chunk = qas[c:c + k]
        types = [question_type(q, a) for q, a in chunk]
        record = {"id": f"easyvqa-{split}-" + name.format(image=image_id, chunk=c // k), "image": f"{image_id}.png",
                  "conversations": _turns(chunk, suffix), "question_type": types[0] if k == 1 else types}
        if k == 1:
            record["answer"] = chunk[0][1]
        yield record


def qa_records(split: str, by_image, seed: int = 0, questions_per_record: int | None = None,
               hint: str = HINT):
    """One record per image with all its questions as turns (shuffled), or chunks of
    `questions_per_record`."""
    suffix = f"\n{hint}" if hint else ""
    for image_id in sorted(by_image):
        qas = list(by_image[image_id])
        random.Random(f"{seed}:{split}:{image_id}").shuffle(qas)
        yield from _chunks(split, image_id, qas, questions_per_record, suffix)


def balanced_records(split: str, by_image, seed: int = 0, hint: str = HINT, questions_per_record: int | None = None):
    """One record per image: its own open questions, and as many yes/no questions as it had, each
    drawn independently (topic among those the image's questions settle, plain or negated with
    equal chance, the true attribute with chance 1/2, else a false one), so every yes/no form is
    "yes" half of the time and an earlier answer says nothing about a later one beyond what the
    image does. (Fixing the answers per record instead, say two yes and two no, is itself
    learnable: a model trained so answers a conversation's later turns from its earlier ones.)
    `questions_per_record=1` gives one question per record: then no answer can be read off an
    earlier turn ("what color is the shape?" -> blue, then "is there a red shape?"), every answer
    has to come from the image, as in the evaluation."""
    suffix = f"\n{hint}" if hint else ""
    for image_id in sorted(by_image):
        rng = random.Random(f"{seed}:{split}:balanced:{image_id}")
        qas = by_image[image_id]
        color, shape = facts(*zip(*qas))
        topics = [t for t in ((color, COLORS, "{} shape"), (shape, SHAPES, "{}")) if t[0] is not None]
        if not topics:
            continue
        conversation = [(q, a) for q, a in qas if a in COLORS or a in SHAPES]
        for _ in range(len(qas) - len(conversation)):
            truth, options, thing = rng.choice(topics)
            attr = truth if rng.random() < 0.5 else rng.choice([o for o in options if o != truth])
            neg = rng.random() < 0.5
            q = rng.choice(NEGATED if neg else PLAIN).format(thing.format(attr))
            conversation.append((q, "yes" if (attr == truth) != neg else "no"))
        rng.shuffle(conversation)
        name = "{image}-balanced" + ("" if questions_per_record is None else "-{chunk}")
        yield from _chunks(split, image_id, conversation, questions_per_record, suffix, name)


def open_records(split: str, by_image, seed: int = 0, hint: str = HINT):
    """One record per image with its open questions only ("what color is the shape?", "what is
    the blue shape?"): naming what is in the image, no yes/no logic on top. Meant for
    `data.turns: independent`, where no question sees another's answer."""
    suffix = f"\n{hint}" if hint else ""
    for image_id in sorted(by_image):
        qas = [(q, a) for q, a in by_image[image_id] if a in COLORS or a in SHAPES]
        random.Random(f"{seed}:{split}:open:{image_id}").shuffle(qas)
        if qas:
            yield from _chunks(split, image_id, qas, None, suffix, "{image}-open")


def caption_records(split: str, by_image, seed: int = 0):
    for image_id in sorted(by_image):
        color, shape = facts(*zip(*by_image[image_id]))
        text = caption(color, shape, random.Random(f"{seed}:{split}:caption:{image_id}"))
        yield {"id": f"easyvqa-{split}-{image_id}-caption", "image": f"{image_id}.png",
               "conversations": [{"from": "human", "value": IMAGE_MARKER}, {"from": "gpt", "value": text}],
               "color": color, "shape": shape}


def export_easyvqa(out_dir: str, splits=("train", "test"), seed: int = 0,
                   questions_per_record: int | None = None, hint: str = HINT) -> dict:
    """Writes OUT/{split}/images/*.png (copied, so the folder is self-contained),
    OUT/{split}_qa.jsonl, OUT/{split}_captions.jsonl, OUT/train_qa_balanced.jsonl,
    OUT/train_qa_balanced_single.jsonl (the same questions, one per record) and
    OUT/train_qa_open_single.jsonl (its open colour / shape questions only) and
    OUT/train_qa_open.jsonl (each image's open questions in one record). Returns record counts per
    file."""
    counts = {}
    for split in splits:
        by_image, paths = _by_image(split)
        image_dir = os.path.join(out_dir, split, "images")
        os.makedirs(image_dir, exist_ok=True)
        for image_id, src in paths.items():
            shutil.copyfile(src, os.path.join(image_dir, f"{image_id}.png"))
        qa = os.path.join(out_dir, f"{split}_qa.jsonl")
        counts[qa] = _write_jsonl(qa, qa_records(split, by_image, seed, questions_per_record, hint))
        cap = os.path.join(out_dir, f"{split}_captions.jsonl")
        counts[cap] = _write_jsonl(cap, caption_records(split, by_image, seed))
        if split == "train":
            bal = os.path.join(out_dir, f"{split}_qa_balanced.jsonl")
            counts[bal] = _write_jsonl(bal, balanced_records(split, by_image, seed, hint))
            single = os.path.join(out_dir, f"{split}_qa_balanced_single.jsonl")
            counts[single] = _write_jsonl(single, balanced_records(split, by_image, seed, hint, questions_per_record=1))
            # Naming the colour or shape is the most direct supervision of seeing: no yes/no logic
            # on top, and the test split's most frequent topic (colour) is a single answer word.
            opened = os.path.join(out_dir, f"{split}_qa_open_single.jsonl")
            counts[opened] = _write_jsonl(opened, (r for r in balanced_records(split, by_image, seed, hint, 1)
                                                   if r["question_type"] in ("color", "shape")))
            opened = os.path.join(out_dir, f"{split}_qa_open.jsonl")
            counts[opened] = _write_jsonl(opened, open_records(split, by_image, seed, hint))
    return counts


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--questions-per-record", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-hint", action="store_true", help="do not append the short-answer prompt")
    args = p.parse_args(argv)
    counts = export_easyvqa(args.out_dir, seed=args.seed, questions_per_record=args.questions_per_record,
                            hint="" if args.no_hint else HINT)
    for path, n in counts.items():
        print(f"{n:>7} records  {path}")


if __name__ == "__main__":
    main()
