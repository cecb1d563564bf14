"""Training MFU on this CPU: the demo stages' useful FLOP/s as a fraction of the machine's matmul peak.

  peak      best-of GFLOP/s of an NxN @ NxN matmul (fp32; bf16 too where the CPU has bf16 units)
            with the threads training uses, before and after every stage (the best counts)
  stages    each recipe of recipes/demo-easyvqa/ on the demo's own data (easy-VQA train, exported
            to the work folder), batch shapes, freezing and optimizer, in the dtype the trainer
            picks (train.bf16=auto; --other-dtype: the other one too): one warm-up step, then
            --steps steps of the trainer's step (train_step's forward / backward / clipping, then
            AdamW) timed by phase; useful FLOPs from train/flops.py (what the trainer logs)
  breakdown per stage: padding fraction and LM-head share of the FLOPs, time by phase (data,
            forward, backward, clipping, optimizer), and one step under torch.profiler split by op
            kind (GEMMs, PEL convs, attention, dtype casts / copies, routing gathers, the rest)

Every rate is given by wall time and by process CPU time / threads: on a shared machine the wall
clock counts the time other jobs had the cores, the CPU clock does not (both are in the table).
--trainer also runs `eve_vlm.train.train` per stage and quotes its logged GFLOP/s (wall); the
trainer's own overhead over such a loop is bench_train.py's subject.

The stages chain through each other's saved models in the demo; here they start from the upcycled
SmolLM2-135M-Instruct (stage 1 and 2.1: no vision copies, 2.1 builds them by init_vision as its
recipe does; 2.2 / 3: a model with copies), saved once to the work folder. Weight values do not
change the work a step does, so the FLOP/s are the demo's.

    python benchmarks/bench_mfu.py                      # appends a section to benchmarks/RESULTS.md
    python benchmarks/bench_mfu.py --stages stage2.2 --steps 1 --no-write
"""

import argparse
import gc
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

from machine import machine, report
from eve_vlm.dtypes import torch_dtype
from eve_vlm.model import EveConfig
from eve_vlm.train import train
from eve_vlm.train.build import freeze, init_vision, load_model
from eve_vlm.train.data import build_data
from eve_vlm.train.flops import step_flops
from eve_vlm.train.metrics import read_metrics
from eve_vlm.train.precision import choose, cpu_bf16_units
from eve_vlm.train.recipe import Recipe, load_recipe
from eve_vlm.train.trainer import make_optimizer, summed_loss

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
STAGES = ("stage1", "stage2.1", "stage2.2", "stage3")
# profiler op names by kind (self CPU time); everything else is "other" (elementwise, norms, ...)
KINDS = {
    "GEMM (linear, LM head)": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear",
                               "mkldnn::", "aten::_mkldnn"),
    "PEL convs": ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution"),
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "dtype casts / copies": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "routing gathers / scatters": ("aten::index_select", "aten::index_copy_", "aten::index_add_",
                                   "aten::index", "aten::index_put_", "aten::masked_scatter"),
}


def prepare(work: str) -> dict:
    """easy-VQA train data and the stage-shaped start models, made once in `work`."""
    data = os.path.join(work, "data")
    if not os.path.exists(os.path.join(data, "train_qa.jsonl")):
        from eve_vlm.data.easyvqa import export_easyvqa

        export_easyvqa(data, splits=("train",), hint="")  # as the demo exports it
    models = {"stage1": os.path.join(work, "stage1-model"), "copies": os.path.join(work, "copies-model")}
    if not os.path.exists(os.path.join(models["copies"], "config.json")):
        stage1 = load_recipe(str(ROOT / "recipes" / "demo-easyvqa" / "stage1.yaml"))  # upcycles SmolLM2
        model, processor = load_model(stage1.model, stage1.data)
        model.save_pretrained(models["stage1"])
        processor.save_pretrained(models["stage1"])
        init_vision(model).save_pretrained(models["copies"])
        processor.save_pretrained(models["copies"])
    return {"data": data, **models}


def stage_recipe(stage: str, world: dict, run_dir: str, steps: int, bf16) -> Recipe:
    """The demo's recipe for `stage`, on the work folder's data and start models."""
    source = world["copies"] if stage in ("stage2.2", "stage3") else world["stage1"]
    overrides = [f"model.source={source}", f"train.steps={steps}", f"train.bf16={bf16}", "train.progress=false",
                 f"output.dir={run_dir}", "checkpoint.every=null"]
    recipe = load_recipe(str(ROOT / "recipes" / "demo-easyvqa" / f"{stage}.yaml"), overrides)
    for s in recipe.data.sources:
        s.path, s.image_root = (v.replace("demo-out/data", world["data"]) for v in (s.path, s.image_root))
    return recipe


def kind_of(name: str) -> str:
    for kind, prefixes in KINDS.items():
        if name.startswith(prefixes):
            return kind
    return "other"


class Clock:
    """Wall and process CPU seconds since the last `lap`."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        out = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return out


def peaks(dtypes, n: int, repeats: int = 5) -> dict:
    """{dtype: (wall GFLOP/s, CPU GFLOP/s)}: best of `repeats` n^3 matmuls, by wall time and by
    process CPU time / threads (the latter does not count the time other jobs had the cores)."""
    out = {}
    threads = torch.get_num_threads()
    for d in dtypes:
        a, b = torch.randn(n, n, dtype=torch_dtype(d)), torch.randn(n, n, dtype=torch_dtype(d))
        a @ b
        wall = cpu = float("inf")
        for _ in range(repeats):
            clock = Clock()
            a @ b
            w, c = clock.lap()
            wall, cpu = min(wall, w), min(cpu, c / threads)
        out[d] = (2 * n**3 / wall / 1e9, 2 * n**3 / cpu / 1e9)
    return out


def stage_loop(recipe: Recipe, steps: int, top: int = 0) -> dict:
    """The trainer's step (train_step's forward / backward / clipping, then AdamW), on the stage's
    model, data and freezing, timed by phase in wall and CPU seconds; then one step under
    torch.profiler split by op kind."""
    tcfg = recipe.train
    torch.manual_seed(tcfg.seed)
    model, processor = load_model(recipe.model, recipe.data)
    freeze(model, tcfg.groups)
    model.train()
    accum = tcfg.global_batch // tcfg.micro_batch
    data = iter(build_data(recipe.data, processor, tcfg.micro_batch, accum, tcfg.seed))
    optimizer = make_optimizer(model, tcfg)
    trainable = [p for p in model.parameters() if p.requires_grad]
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=tcfg.bf16)
    phases = ("data", "forward", "backward", "clip", "optimizer")
    wall, cpu = {k: 0.0 for k in phases}, {k: 0.0 for k in phases}

    def one_step(record: bool) -> list[dict]:
        clock, laps = Clock(), {}
        micro = [next(data) for _ in range(accum)]
        laps["data"] = clock.lap()
        targets = max(sum(int((b["labels"][:, 1:] != -100).sum()) for b in micro), 1)
        fwd = bwd = (0.0, 0.0)
        for batch in micro:
            loss = summed_loss(model, batch, "cpu", autocast, share_prefix=True) / targets
            fwd = tuple(map(sum, zip(fwd, clock.lap())))
            if loss.requires_grad:
                loss.backward()
            bwd = tuple(map(sum, zip(bwd, clock.lap())))
        laps["forward"], laps["backward"] = fwd, bwd
        torch.nn.utils.clip_grad_norm_(trainable, tcfg.max_grad_norm)
        laps["clip"] = clock.lap()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        laps["optimizer"] = clock.lap()
        if record:
            for k, (w, c) in laps.items():
                wall[k] += w
                cpu[k] += c
        return micro

    one_step(False)  # warm-up: first-call kernel set-up, optimizer state allocation
    flops = None
    for _ in range(steps):
        f = step_flops(model.config, tcfg.groups, one_step(True), share_prefix=True)
        flops = f if flops is None else flops + f
    kinds = dict.fromkeys([*KINDS, "other"], 0.0)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_step(False)
    for e in prof.key_averages():
        kinds[kind_of(e.key)] += e.self_cpu_time_total / 1e6
    if top:
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top), flush=True)
    threads = torch.get_num_threads()
    return {"wall": {k: v / steps for k, v in wall.items()}, "cpu": {k: v / steps / threads for k, v in cpu.items()},
            "kinds": kinds, "useful": flops.useful / steps, "padding": flops.padding / steps,
            "parts": {k: v / steps for k, v in flops.parts.items()}}


def trainer_rate(recipe: Recipe) -> float:
    """The trainer's own logged GFLOP/s (wall), median of the steps after the first."""
    train(recipe)
    steps = [r for r in read_metrics(recipe.output.dir) if "loss" in r][1:]
    return statistics.median(r["gflops_per_s"] for r in steps) if steps else float("nan")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=2, help="timed steps per stage (after one warm-up step)")
    p.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    p.add_argument("--other-dtype", action="store_true", help="also time the dtype the trainer does not pick")
    p.add_argument("--packing", action="store_true", help="also time stages 2.2 / 3 with data.packing=true")
    p.add_argument("--trainer", action="store_true", help="also run eve_vlm.train.train per stage (wall GFLOP/s)")
    p.add_argument("--top", type=int, default=0, help="print the profiled step's N costliest ops per run")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads (training and peak)")
    p.add_argument("--peak-size", type=int, default=2048)
    p.add_argument("--work", default=os.path.join(ROOT, "outputs", "bench_mfu"),
                   help="data and start models (kept between runs); runs go to WORK/runs")
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    world = prepare(args.work)
    units = cpu_bf16_units()
    dtypes = ["float32", "bfloat16"] if units else ["float32"]
    peak = peaks(dtypes, args.peak_size)
    print(f"peak {peak}", flush=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    rows, reasons = [], {}
    for stage in args.stages:
        run_dir = os.path.join(args.work, "runs", f"{stamp}-{stage}")
        auto = stage_recipe(stage, world, run_dir, args.steps, "auto")
        config = EveConfig.from_pretrained(auto.model.source)
        picked = choose("auto", torch.device("cpu"), config, auto.train.micro_batch * auto.data.max_length)
        reasons[stage] = f"{picked.dtype}: {picked.reason}"
        variants = [(picked.dtype, "")] + [(d, "") for d in dtypes if d != picked.dtype and args.other_dtype]
        if args.packing and stage in ("stage2.2", "stage3"):
            variants.append((picked.dtype, "packed"))
        for dtype, how in variants:
            r = stage_recipe(stage, world, run_dir, args.steps, dtype == "bfloat16")
            if how == "packed":
                r.data.packing = True
            res = stage_loop(r, args.steps, args.top)
            gc.collect()  # the last model, gradients and AdamW state (~7 GB at stage 2.2) go before the next
            if args.trainer and not how:
                res["trainer"] = trainer_rate(stage_recipe(stage, world, f"{run_dir}-{dtype}", args.steps + 1,
                                                           dtype == "bfloat16"))
            rows.append((stage, dtype, how, dtype == picked.dtype and not how, res))
            print(stage, dtype, how, {k: v for k, v in res.items() if k != "kinds"}, flush=True)
        again = peaks(dtypes, args.peak_size)
        peak = {d: tuple(map(max, peak[d], again[d])) for d in dtypes}

    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    n = args.peak_size
    lines = [
        f"## bench_mfu.py — {datetime.date.today()}", "",
        f"Machine: {machine()}; bf16 units: {units or 'none'}; load average at the end {load}; "
        f"{args.threads} torch thread(s) for training and peak. Demo recipes (recipes/demo-easyvqa) on the "
        f"demo's data, SmolLM2-135M-Instruct upcycled; per stage one warm-up step, then {args.steps} timed "
        "steps of the trainer's step (forward, backward, clipping, AdamW) in a stage-shaped loop.", "",
        f"Peak: best of 5 {n}x{n} @ {n}x{n} matmuls, before and after every stage: " + ", ".join(
            f"{d} {w:,.0f} GFLOP/s by wall time, {c:,.0f} by CPU time" for d, (w, c) in peak.items()) +
        ". CPU time = process CPU seconds / threads: what the cores gave this process, so other jobs on the "
        "machine do not count against it (a thread spinning at a barrier still does).", "",
        "| stage | dtype | picked | useful TFLOP / step | padding | LM head | s / step (wall) | GFLOP/s (wall) "
        "| MFU (wall) | s / step (CPU) | GFLOP/s (CPU) | MFU (CPU) | MFU (CPU) vs fp32 peak |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for stage, dtype, how, picked, res in rows:
        wall, cpu = sum(res["wall"].values()), sum(res["cpu"].values())
        rate_wall, rate_cpu = res["useful"] / wall / 1e9, res["useful"] / cpu / 1e9
        pw, pc = peak[dtype]
        lines.append(
            f"| {stage}{' packed' if how else ''} | {dtype} | {'yes' if picked else 'no'} | {res['useful'] / 1e12:.2f} | "
            f"{res['padding'] / (res['useful'] + res['padding']):.1%} | {res['parts']['lm_head'] / res['useful']:.1%} | "
            f"{wall:.2f} | {rate_wall:.1f} | {rate_wall / pw:.1%} | {cpu:.2f} | {rate_cpu:.1f} | {rate_cpu / pc:.1%} | "
            f"{rate_cpu / peak['float32'][1]:.1%} |")
    lines += ["", "dtype the trainer picks (train.bf16=auto): " + "; ".join(
        f"{s} {r}" for s, r in reasons.items()) + ".", ""]
    lines += ["Where the time goes (CPU seconds per step by phase, then the profiled step's self time by op kind, "
              "as shares):", "",
              "| stage | dtype | " + " | ".join(rows[0][4]["cpu"]) + " | " + " | ".join(rows[0][4]["kinds"]) + " |",
              "| --- | --- |" + " ---: |" * (len(rows[0][4]["cpu"]) + len(rows[0][4]["kinds"]))]
    for stage, dtype, how, picked, res in rows:
        cpu, kinds = sum(res["cpu"].values()), sum(res["kinds"].values())
        lines.append(f"| {stage}{' packed' if how else ''} | {dtype} | " +
                     " | ".join(f"{v / cpu:.1%}" for v in res["cpu"].values()) + " | " +
                     " | ".join(f"{v / kinds:.1%}" if kinds else "-" for v in res["kinds"].values()) + " |")
    if args.trainer:
        lines += ["", "The trainer's own logged GFLOP/s (wall, median of steps 2..): " + ", ".join(
            f"{s} {d} {res['trainer']:.1f}" for s, d, how, _, res in rows if "trainer" in res) + "."]
    lines.append("")
    report(lines, args.results, not args.no_write)


if __name__ == "__main__":
    main()
