"""Synthetic text-in-image data: words and numbers rendered with Pillow's built-in font at varied
sizes, colours, positions and aspect ratios, for reading (OCR-style) skills. Deterministic by seed.

    python -m eve_vlm.data.textimage OUT_DIR --num 2000 [--seed 0]

writes OUT/images/*.png, OUT/qa.jsonl ("What is written in the image?") and OUT/captions.jsonl.
"""

import argparse
import functools
import json
import os
import random

from PIL import Image, ImageDraw, ImageFont

from eve_vlm.processing.chat import IMAGE_MARKER

WORDS = (
    "apple river stone cloud seven green table window light music paper garden orange yellow "
    "bridge silver rocket planet forest summer winter coffee market school friend number signal "
    "yes no open close stop start north south east west hello world data model train image "
    "vision token layer patch pixel answer question simple quick brown fox lazy dog"
).split()
PALETTE = {  # name -> RGB; pairs are only used when their contrast is high enough to read
    "white": (255, 255, 255), "black": (0, 0, 0), "red": (200, 30, 30), "blue": (30, 60, 200),
    "green": (30, 140, 50), "yellow": (240, 210, 40), "orange": (240, 130, 20),
    "purple": (120, 50, 160), "gray": (128, 128, 128), "light blue": (170, 210, 240),
    "pink": (240, 170, 200), "dark green": (10, 70, 30), "beige": (235, 225, 200),
}
SIZES = ((256, 64), (192, 96), (320, 320), (128, 128), (384, 48), (96, 192), (224, 160), (64, 256))
MIN_FONT = 10
QUESTION = "What is written in the image?"
CAPTIONS = (
    'The text "{text}" written in {fg} on a {bg} background.',
    'A {bg} image with the words "{text}" in {fg} letters.',
    '{fg_cap} text on {bg} reads "{text}".',
    'An image showing "{text}" in {fg} on a plain {bg} background.',
)


_font = functools.lru_cache(maxsize=None)(lambda size: ImageFont.load_default(size=size))


def _luminance(rgb) -> float:
    r, g, b = (c / 255 for c in rgb)
    return 0.299 * r + 0.587 * g + 0.114 * b


def _text(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.25:
        return str(rng.randrange(10 ** rng.randint(1, 6)))
    return " ".join(rng.choice(WORDS) for _ in range(rng.choice((1, 1, 2, 3))))


def render(text: str, size: tuple[int, int], fg, bg, rng: random.Random) -> Image.Image | None:
    """`text` at the largest font size (up to a random cap) at which it fits, at a random
    position; None if it does not fit even at the smallest readable size."""
    w, h = size
    image = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(image)
    font_size = rng.randint(max(MIN_FONT, h // 6), max(MIN_FONT + 2, int(h * 0.8)))
    while True:
        font = _font(font_size)
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        if right - left <= 0.95 * w and bottom - top <= 0.95 * h:
            break
        if font_size == MIN_FONT:
            return None
        font_size = max(MIN_FONT, int(font_size * 0.85))
    x = rng.uniform(0, max(0.0, w - (right - left))) - left
    y = rng.uniform(0, max(0.0, h - (bottom - top))) - top
    draw.text((x, y), text, fill=fg, font=font)
    return image


def generate(out_dir: str, num: int = 1000, seed: int = 0) -> dict:
    rng = random.Random(seed)
    names = list(PALETTE)
    pairs = [(f, b) for f in names for b in names if abs(_luminance(PALETTE[f]) - _luminance(PALETTE[b])) > 0.4]
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    qa_path, cap_path = os.path.join(out_dir, "qa.jsonl"), os.path.join(out_dir, "captions.jsonl")
    with open(qa_path, "w") as qa, open(cap_path, "w") as cap:
        for i in range(num):
            size, (fg, bg) = rng.choice(SIZES), rng.choice(pairs)
            image = None
            while image is None:  # a long text on a narrow image: draw another text
                text = _text(rng)
                image = render(text, size, PALETTE[fg], PALETTE[bg], rng)
            name = f"{i:06d}.png"
            image.save(os.path.join(out_dir, "images", name))
            base = {"image": name, "text": text, "size": list(size)}
            qa.write(json.dumps({"id": f"textimage-{i}", **base, "conversations": [
                {"from": "human", "value": f"{IMAGE_MARKER}\n{QUESTION}"}, {"from": "gpt", "value": text}]}) + "\n")
            words = rng.choice(CAPTIONS).format(text=text, fg=fg, bg=bg, fg_cap=fg.capitalize())
            cap.write(json.dumps({"id": f"textimage-{i}-caption", **base, "conversations": [
                {"from": "human", "value": IMAGE_MARKER}, {"from": "gpt", "value": words}]}) + "\n")
    return {qa_path: num, cap_path: num}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out_dir")
    p.add_argument("--num", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for path, n in generate(args.out_dir, args.num, args.seed).items():
        print(f"{n:>7} records  {path}")


if __name__ == "__main__":
    main()
