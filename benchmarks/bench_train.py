"""Training throughput: the trainer vs a bare loop, and 1 vs 2 processes, on this machine.

  trainer   `eve_vlm.train.train(recipe)`: tokens/s per optimizer step as the trainer logs it (the
            whole loop period: data, forward/backward, clipping, AdamW, scheduler, bad-sample
            accounting, metrics.jsonl, TensorBoard, progress bar)
  bare      the same model folder and the same batches (the same TrainData, so data loading costs
            the same), a loop of forward + cross-entropy + backward + AdamW step, timed the same way
  2 procs   `torchrun --standalone --nproc_per_node=2` with the same recipe and global batch
            (FSDP2 per decoder layer, gloo); torchrun gives each process one thread

Model: a random toy EVE model (hidden 256, 4 layers, all vision copies) with a byte-level
tokenizer; data: toy images upscaled to the 256² budget (73 visual tokens) with ~200-token captions.
fp32. Repeats alternate the order of trainer and bare; medians over all steps after warm-up.

    python benchmarks/bench_train.py               # appends a section to benchmarks/RESULTS.md
    python benchmarks/bench_train.py --quick --no-write
"""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import machine, report
from eve_vlm import EveForConditionalGeneration
from eve_vlm.train import train
from eve_vlm.train.build import freeze, load_model
from eve_vlm.train.data import build_data
from eve_vlm.train.metrics import read_metrics
from eve_vlm.train.recipe import Recipe, save_recipe, validate
from eve_vlm.train.toy import toy_data, toy_model
from eve_vlm.train.trainer import num_tokens, summed_loss

HERE = Path(__file__).resolve().parent
SHAPE = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
             num_key_value_heads=2, pel_hidden_size=256)


def make_world(root: str) -> dict:
    model = toy_model(os.path.join(root, "model"), decoupled=["attention", "norm", "ffn"], max_size=256, **SHAPE)
    src = toy_data(os.path.join(root, "data"), n=256)
    long = os.path.join(root, "data", "long.jsonl")
    with open(src) as f, open(long, "w") as out:
        for line in f:
            r = json.loads(line)
            r["conversations"][1]["value"] = " ".join([r["conversations"][1]["value"]] * 10)
            out.write(json.dumps(r) + "\n")
    params = sum(p.numel() for p in EveForConditionalGeneration.from_pretrained(model).parameters())
    return {"model": model, "data": long, "images": os.path.join(root, "data", "images"), "params": params}


def recipe(world: dict, run_dir: str, steps: int, micro: int, batch: int) -> Recipe:
    return validate({
        "model": {"source": world["model"]},
        "data": {"sources": [{"path": world["data"], "image_root": world["images"]}], "max_size": 256,
                 "resize_mode": "inference", "max_length": 1024},
        "train": {"groups": ["pel", "vision", "llm"], "lr": 1e-4, "global_batch": batch, "micro_batch": micro,
                  "steps": steps, "bf16": False, "progress": True},
        "checkpoint": {"every": None},
        "output": {"dir": run_dir},
    })


def trainer_rates(r: Recipe, warmup: int) -> list[float]:
    train(r)
    return [m["tokens_per_s"] for m in read_metrics(r.output.dir)][warmup:]


def bare_rates(r: Recipe, warmup: int) -> list[float]:
    """The minimum a training loop must do, over the very batches the trainer sees."""
    torch.manual_seed(r.train.seed)
    model, processor = load_model(r.model, r.data)
    freeze(model, r.train.groups)
    model.train()
    accum = r.train.global_batch // r.train.micro_batch
    batches = iter(build_data(r.data, processor, r.train.micro_batch, accum, r.train.seed))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=r.train.lr)
    rates, t0 = [], time.perf_counter()
    for _ in range(r.train.steps):
        micro = [next(batches) for _ in range(accum)]
        targets = sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro)
        for b in micro:
            (summed_loss(model, b, "cpu") / targets).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
        rates.append(sum(num_tokens(b) for b in micro) / elapsed)
    return rates[warmup:]


def two_process_rates(r: Recipe, tmp: str, warmup: int) -> list[float]:
    path = os.path.join(tmp, "recipe-2p.yaml")
    save_recipe(r, path)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "eve_vlm.train", "train", path],
                   check=True, capture_output=True, text=True)
    return [m["tokens_per_s"] for m in read_metrics(r.output.dir)][warmup:]




def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads of the single-process runs (on a busy 2-core machine a second OpenMP "
                        "thread that gets preempted stalls every op)")
    p.add_argument("--quick", action="store_true", help="6 steps, 1 repeat")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup = 6, 1, 2
    torch.set_num_threads(args.threads)
    rates = {"trainer": [], "bare": [], "2 procs": []}
    with tempfile.TemporaryDirectory() as tmp:
        world = make_world(tmp)
        for rep in range(args.repeats):
            r = lambda name: recipe(world, os.path.join(tmp, f"{name}-{rep}"), args.steps,  # noqa: E731
                                    args.micro_batch, args.global_batch)
            order = ["trainer", "bare"] if rep % 2 == 0 else ["bare", "trainer"]
            for name in order:
                run = trainer_rates if name == "trainer" else bare_rates
                rates[name] += run(r(name), args.warmup)
            rates["2 procs"] += two_process_rates(r("2p"), tmp, args.warmup)
            print(f"repeat {rep + 1}/{args.repeats}: " + ", ".join(
                f"{k} {statistics.median(v):,.0f} tok/s" for k, v in rates.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    overhead = 1 - med["trainer"] / med["bare"]
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    lines = [
        f"## bench_train.py — {datetime.date.today()}", "",
        f"Machine: {machine()}; load average at the end {load}. Toy EVE model (hidden 256, 4 layers, all vision "
        f"copies, {world['params'] / 1e6:.1f} M params), fp32, "
        f"micro-batch {args.micro_batch}, global batch {args.global_batch}, ~300 tokens a sample (73 visual); "
        f"medians of {len(rates['trainer'])} steps ({args.repeats} repeats x {args.steps - args.warmup} after "
        f"{args.warmup} warm-up). Single process: {args.threads} thread(s); 2 processes: 1 thread each (torchrun).", "",
        "| run | tokens/s | vs bare loop |", "| --- | ---: | ---: |",
        *(f"| {k} | {v:,.0f} | {v / med['bare']:.3f} |" for k, v in med.items()), "",
        f"Trainer overhead: {overhead:.1%} (goal <= 5 %). 2 processes vs 1 (trainer): "
        f"{med['2 procs'] / med['trainer']:.2f}x.", "",
    ]
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
