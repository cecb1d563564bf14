"""LoRA vs full fine-tuning at the SmolLM2-135M shape: trainable parameters, peak memory, step time.

Model: SmolLM2-135M-Instruct (the offline GGUF) upcycled with all vision copies (EVEv2), fp32.
Variants, each a training step (forward, cross-entropy on the text positions, backward, fused AdamW
as the trainer builds it, zero_grad) on the same image+text row:

  full         every parameter trains (train.groups = pel, vision, llm)
  lora-vision  `eve_vlm.train.lora.apply(target="vision")`, the PEL trained fully (groups = pel)
  lora-all     the same on every decoder linear (target="all")

Each variant runs in a fresh subprocess (after one shared conversion to a model folder), so its peak
memory is its own: the kernel's RSS high-water mark (VmHWM) over the warm-up and timed steps minus
the RSS before the first step (weights loaded, optimizer built, no state yet): gradients, AdamW
state and activations. tracemalloc would not see torch's allocations. Step time: median of the
timed steps (the warm-up step allocates the optimizer state and is not timed).

    python benchmarks/bench_lora.py                      # writes benchmarks/RESULTS.md
    python benchmarks/bench_lora.py --steps 2 --no-write
"""

import argparse
import contextlib
import ctypes
import datetime
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import machine, memory_status, report

HERE = Path(__file__).resolve().parent
VARIANTS = {"full": None, "lora-vision": "vision", "lora-all": "all"}
LAYOUT = (96, (384, 384), 160)  # text | image (1 + 12*13 = 157 tokens) | text: 413 tokens


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def convert(folder: str) -> None:
    from eve_vlm.assets import smollm2_gguf
    from eve_vlm.convert.upcycle import upcycle

    gguf_dir, gguf = smollm2_gguf()
    model, _ = upcycle(gguf_dir, gguf_file=gguf, dtype=torch.float32)  # all vision copies (EVEv2)
    model.save_pretrained(folder)


def row(model) -> dict:
    torch.manual_seed(0)
    ids, pixels = [], []
    for piece in LAYOUT:
        if isinstance(piece, int):
            ids.append(torch.randint(0, model.config.image_token_id, (piece,)))
        else:
            pixels.append(torch.randn(3, *piece))
            ids.append(torch.full((model.model.patch_embed.num_tokens(*piece),), model.config.image_token_id))
    ids = torch.cat(ids)[None]
    labels = ids.masked_fill(ids == model.config.image_token_id, -100)
    return {"input_ids": ids, "pixel_values": pixels, "labels": labels}


def child(folder: str, variant: str, r: int, steps: int) -> None:
    """One variant in this fresh process; prints a JSON line."""
    from eve_vlm import EveForConditionalGeneration
    from eve_vlm.train import lora
    from eve_vlm.train.build import freeze

    model = EveForConditionalGeneration.from_pretrained(folder, dtype=torch.float32)
    batch = row(model)
    if VARIANTS[variant] is None:
        freeze(model, ["pel", "vision", "llm"])
    else:
        model = lora.apply(model, lora.LoraSpec(r=r, alpha=2 * r, dropout=0.0, target=VARIANTS[variant]), ["pel"])
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-5, fused=True)
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the kernel: an honest baseline
    before = memory_status()["VmRSS"]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    times = []
    for _ in range(steps + 1):
        t0 = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    peak = memory_status()["VmHWM"]
    print(json.dumps({"variant": variant, "trainable": sum(p.numel() for p in trainable),
                      "total": sum(p.numel() for p in model.parameters()), "tokens": batch["input_ids"].shape[1],
                      "base_rss": before, "peak_rss": peak, "increase": peak - before, "times": times[1:]}))


def run_variant(folder: str, variant: str, args) -> dict:
    log(f"{variant} ...")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    out = subprocess.run([sys.executable, __file__, "--child", folder, variant, "--r", str(args.r),
                          "--steps", str(args.steps), "--threads", str(args.threads)],
                         env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    p.add_argument("--r", type=int, default=16, help="LoRA rank (alpha = 2r)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--child", nargs=2, metavar=("FOLDER", "VARIANT"), help=argparse.SUPPRESS)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.child:
        return child(*args.child, args.r, args.steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        log("converting SmolLM2-135M-Instruct (upcycle, all vision copies) ...")
        convert(tmp)
        res = {v: run_variant(tmp, v, args) for v in VARIANTS}
    full = res["full"]
    med = {v: statistics.median(r["times"]) for v, r in res.items()}
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    gib = 2**30
    lines = [
        f"## bench_lora.py — {datetime.date.today()}", "",
        f"Machine: {machine()}; load average at the end {load} (a shared machine: other jobs ran at the same "
        f"time, so step times are indicative; the variants ran one after the other in one run). SmolLM2-135M-"
        f"Instruct upcycled with all vision copies ({full['total'] / 1e6:.1f} M parameters), fp32, one row of "
        f"{full['tokens']} tokens (text {LAYOUT[0]} | one {LAYOUT[1][0]}x{LAYOUT[1][1]} image, 157 visual tokens | "
        f"text {LAYOUT[2]}), fused AdamW; LoRA r={args.r}, alpha={2 * args.r}, the PEL trained fully in both LoRA "
        f"variants. Step time: median of {args.steps} steps after one warm-up step. Peak memory: RSS high-water "
        "mark (VmHWM) over all steps of a fresh subprocess minus its RSS before the first step (weights "
        "loaded): gradients, AdamW state, activations.", "",
        "| variant | trainable parameters | share | peak memory increase | peak RSS | step time | vs full |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(f"| {v} | {r['trainable'] / 1e6:,.2f} M | {r['trainable'] / r['total']:.2%} | "
          f"{r['increase'] / gib:.2f} GiB | {r['peak_rss'] / gib:.2f} GiB | {med[v]:.2f} s | "
          f"{med[v] / med['full']:.2f}x |" for v, r in res.items()), "",
        f"Whole benchmark: {time.perf_counter() - start:.0f} s.", "",
    ]
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
