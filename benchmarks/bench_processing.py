"""Throughput of the processing layer on one core: images/s through EveImageProcessor and samples/s
through EveProcessor.encode_conversation, from real photos (scikit-image's astronaut, coffee, chelsea).

Rates are per CPU-second of this process (torch limited to one thread), so they read as
"per core" and stay meaningful on a busy machine; wall-clock rates are printed beside them.
Each case runs `--repeats` times; the median is reported. The "pillow-reference" row is the same
computation with Pillow's bicubic resize + numpy normalization, for comparison with the torch
uint8 resize the processor uses.

    python benchmarks/bench_processing.py            # prints a table, appends to benchmarks/RESULTS.md
    python benchmarks/bench_processing.py --quick    # fewer repeats, no RESULTS.md
"""

import argparse
import datetime
import io
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from machine import machine
from eve_vlm.assets import sample_photo
from eve_vlm.processing import EveImageProcessor, EveProcessor, qwen_tokenizer, target_size

HERE = Path(__file__).resolve().parent
PHOTOS = ("astronaut", "coffee", "chelsea")


def jpeg(img: Image.Image, size=None) -> bytes:
    buf = io.BytesIO()
    (img.resize(size, Image.BICUBIC) if size else img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def pillow_reference(img: Image.Image, max_size: int) -> torch.Tensor:
    h, w = target_size(img.height, img.width, max_size)
    x = np.asarray(img.resize((w, h), Image.BICUBIC), dtype=np.float32)
    mean = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
    std = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray((x * (1 / (255 * std)) - mean / std).transpose(2, 0, 1)))


def rate(fn, items: int, repeats: int, min_seconds: float) -> tuple[float, float]:
    """Median (items per CPU-second, items per wall-second) over `repeats` timed runs."""
    fn()  # warm-up
    cpu, wall = [], []
    for _ in range(repeats):
        n, c0, w0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - w0 < min_seconds:
            fn()
            n += items
        cpu.append(n / (time.process_time() - c0))
        wall.append(n / (time.perf_counter() - w0))
    return statistics.median(cpu), statistics.median(wall)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    repeats, min_s = (2, 0.5) if args.quick else (args.repeats, 2.0)
    torch.set_num_threads(1)

    photos = [sample_photo(n) for n in PHOTOS]
    jpegs = [jpeg(p) for p in photos]
    big = [jpeg(photos[0], (4000, 3000))]  # a camera-sized photo
    rows = []

    def add(case, fn, items):
        cpu, wall = rate(fn, items, repeats, min_s)
        rows.append((case, cpu, wall))
        print(f"{case:58s} {cpu:8.1f} /cpu-s {wall:8.1f} /s", flush=True)

    for max_size in (800, 1600):
        proc = EveImageProcessor(max_size=max_size)
        add(f"image, {max_size}², decoded photos (PIL)", lambda: proc(photos), len(photos))
        add(f"image, {max_size}², JPEG bytes (decode included)", lambda: proc(jpegs), len(jpegs))
        add(f"image, {max_size}², pillow-reference (PIL resize)",
            lambda: [pillow_reference(p, max_size) for p in photos], len(photos))
        for mode in ("inference", "train"):
            add(f"image, {max_size}², 4000x3000 JPEG, {mode}", lambda: proc(big, resize_mode=mode), 1)

    tok_proc = EveProcessor(EveImageProcessor(max_size=800), qwen_tokenizer())
    words = "The photo shows an astronaut in a white suit holding a helmet, with a flag behind her. "
    conv = [{"from": "human", "value": "<image>\nDescribe the image in detail."},
            {"from": "gpt", "value": words * 3},
            {"from": "human", "value": "What is she holding?"},
            {"from": "gpt", "value": "A helmet."}]
    text_conv = [{"from": "human", "value": conv[0]["value"][8:]}] + conv[1:]
    for template in ("eve", "native"):
        add(f"encode_conversation, {template}, 1 photo at 800²",
            lambda: tok_proc.encode_conversation(conv, photos[:1], template=template), 1)
        add(f"encode_conversation, {template}, text only",
            lambda: tok_proc.encode_conversation(text_conv, [], template=template), 1)

    header = (f"## Processing throughput ({datetime.date.today()}, `benchmarks/bench_processing.py`)\n\n"
              f"Machine: {machine()}, Pillow {Image.__version__}; load average at the end "
              f"{os.getloadavg()[0]:.1f}. Medians of {repeats} runs; per CPU-second = per core.\n\n")
    table = "| case | per CPU-second | per wall-second |\n| --- | ---: | ---: |\n" + "".join(
        f"| {case} | {cpu:.1f} | {wall:.1f} |\n" for case, cpu, wall in rows)
    print("\n" + header + table)
    if not args.quick:
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write("\n" + header + table)


if __name__ == "__main__":
    main()
