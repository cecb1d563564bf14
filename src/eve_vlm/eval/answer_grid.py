"""A picture of a model's answers: test images in a grid, each upscaled (nearest neighbour) under a
frame and above its question, the model's answer and the right one; frame and answer are green
where the answer is right, red where it is wrong. `make demo` writes it as answers.png.

`pick_examples` chooses what such a picture (and the demo's printed examples) shows: questions
about different images, the question types taken in turn.
"""

import math

RIGHT = (0, 140, 0)
WRONG = (210, 0, 0)
TEXT = (20, 20, 20)
MUTED = (90, 90, 90)
BACKGROUND = (255, 255, 255)


def pick_examples(predictions: list[dict], n: int) -> list[dict]:
    """Up to `n` prediction rows, each about a different image, taking the question types (the
    rows' "group") in turn, in sorted order, and within a type the rows in their order. The
    choice depends on the predictions only, so it is the same on every run, and the first k of
    `n` are the k picked for any smaller count."""
    by_type: dict = {}
    for row in predictions:
        if row.get("image"):
            by_type.setdefault(row.get("group"), []).append(row)
    queues = {t: iter(by_type[t]) for t in sorted(by_type, key=lambda t: (t is None, str(t)))}
    picked, used = [], set()
    while len(picked) < n and queues:
        for t in list(queues):
            row = next((r for r in queues[t] if r["image"] not in used), None)
            if row is None:
                del queues[t]  # this type has no question about an image not shown yet
                continue
            picked.append(row)
            used.add(row["image"])
            if len(picked) == n:
                break
    return picked


def is_right(row: dict, metric: str = "exact_match") -> bool:
    return not row.get("error") and row["scores"].get(metric) == 1


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels, at most `max_lines` (the last one
    ends with '...' when text is left over)."""
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and draw.textlength(candidate, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = candidate
    lines.append(line)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        while lines[-1] and draw.textlength(lines[-1] + "...", font=font) > width:
            lines[-1] = lines[-1][:-1]
        lines[-1] += "..."
    return lines


def write_answer_grid(examples: list[dict], path: str, columns: int = 4, image_size: int = 128,
                      title: str = "answers", metric: str = "exact_match") -> dict:
    """Draws `examples` (prediction rows of `eval.runner.evaluate`'s results: "image", "question",
    "prediction" or "answer", "answers", "scores", "error") into a PNG at `path`, `columns` to a
    row, each image scaled to `image_size` pixels, under the heading "`title`: R of N right".
    Returns the layout: {"path", "size": (w, h),
    "cells": [{"id", "image", "right", "color", "image_box", "frame_box", "text_box"}]}, boxes as (left, top,
    right, bottom) pixel bounds, right/bottom exclusive."""
    from PIL import Image, ImageDraw

    pad, frame, font_size = 8, 4, max(12, image_size // 8)
    line_h = font_size + 5
    cell_w = max(2 * image_size, 240)
    text_w = cell_w - 2 * pad
    cell_h = pad + image_size + 2 * frame + pad + 4 * line_h + pad
    rows = max(1, math.ceil(len(examples) / columns))
    title_h = 2 * line_h + pad
    size = (columns * cell_w, title_h + rows * cell_h)
    canvas = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    font, bold = _font(font_size), _font(font_size + 1)

    heading = f"{title}: {sum(is_right(row, metric) for row in examples)} of {len(examples)} right"
    draw.text((pad, pad), heading, font=_font(font_size + 4), fill=TEXT)
    draw.text((pad, pad + line_h + 4), "under each image: the question, the model's answer (green where right, "
              "red where wrong) and the true answer", font=font, fill=MUTED)

    cells = []
    for k, row in enumerate(examples):
        x0, y0 = (k % columns) * cell_w, title_h + (k // columns) * cell_h
        right = is_right(row, metric)
        color = RIGHT if right else WRONG
        fx = x0 + (cell_w - image_size) // 2 - frame
        frame_box = (fx, y0 + pad, fx + image_size + 2 * frame, y0 + pad + image_size + 2 * frame)
        draw.rectangle((frame_box[0], frame_box[1], frame_box[2] - 1, frame_box[3] - 1), fill=color)
        with Image.open(row["image"]) as im:
            tile = im.convert("RGB").resize((image_size, image_size), Image.Resampling.NEAREST)
        image_box = (fx + frame, frame_box[1] + frame, fx + frame + image_size, frame_box[1] + frame + image_size)
        canvas.paste(tile, image_box[:2])

        y = frame_box[3] + pad
        question = _wrap(draw, row.get("question") or "", font, text_w, 2)
        for i, line in enumerate(question):
            draw.text((x0 + pad, y + i * line_h), line, font=font, fill=TEXT)
        y += 2 * line_h
        if row.get("error"):
            answer = "model: no answer (failed)"
        else:
            reply = (row.get("answer") or row.get("prediction") or "").strip() or "(empty)"
            answer = f"model: {reply}  ({'right' if right else 'wrong'})"
        answer = _wrap(draw, answer, bold, text_w, 1)[0]
        draw.text((x0 + pad, y), answer, font=bold, fill=color)
        truth = " / ".join(row.get("answers") or []) or "?"
        draw.text((x0 + pad, y + line_h), _wrap(draw, f"truth: {truth}", font, text_w, 1)[0], font=font, fill=MUTED)
        cells.append({"id": row.get("id"), "image": row["image"], "right": right, "color": color,
                      "image_box": image_box, "frame_box": frame_box,
                      "text_box": (x0, frame_box[3], x0 + cell_w, y0 + cell_h)})
    canvas.save(path)
    return {"path": path, "size": size, "cells": cells}
