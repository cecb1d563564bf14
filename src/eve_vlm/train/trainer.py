"""`train(recipe)`: one entry point for every stage, in one process or under torchrun.

    eve train recipes/evev2-7b/stage1.yaml train.lr=1e-4
    torchrun --nproc_per_node=8 -m eve_vlm.train train recipes/evev2-7b/stage2.2.yaml

A step: take grad_accum micro-batches, count the supervised tokens of the whole global batch (all
ranks), and backpropagate each micro-batch's summed cross-entropy divided by that count. The loss is
then the token mean over the global batch, independent of how it is split into micro-batches and
processes, so 1 and N processes train the same model.
"""

import contextlib
import dataclasses
import json
import math
import os
import random
import signal
import threading
import time
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from tqdm import tqdm

from ..data.bad import BadSampleCounter
from ..errors import EveError
from ..model.groups import group_counts, param_group, parameter_table
from ..model.prefix import GroupedPrefix, batch_shared_length, group_prefixes, shared_cache
from ..processing import EveProcessor
from ..processing.chat import IGNORE_INDEX
from . import checkpoint, lora, parallel
from .build import changed, fingerprint, freeze, load_model
from .data import EvalData, TrainData, build_data, build_eval_data
from .export import save_final, save_lora_final
from .flops import Adapters, step_flops
from .metrics import MetricsWriter
from .precision import Precision
from .precision import choose as choose_precision
from .recipe import Recipe, TrainSection, save_recipe
from .schedule import build_scheduler


class StopOnSignal:
    """SIGTERM / SIGINT ask for a stop: the current step finishes, a checkpoint is written, the run
    returns. A second signal of the same kind acts as usual (Ctrl-C twice kills)."""

    def __init__(self):
        self.signum, self._old = None, {}

    def _handle(self, signum, frame):
        self.signum = signum
        signal.signal(signum, self._old[signum])

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGTERM, signal.SIGINT):
                self._old[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)


def make_optimizer(model, cfg: TrainSection) -> torch.optim.AdamW:
    by_group = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_group.setdefault(param_group(name), []).append(p)
    pel_lr = cfg.pel_lr if cfg.pel_lr is not None else cfg.lr
    groups = [{"params": ps, "lr": pel_lr if g == "pel" else cfg.lr, "name": g} for g, ps in by_group.items()]
    # fused: one kernel over all tensors; the per-tensor default took ~14 % of a CPU step (profiled)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=True)


def model_inputs(batch: dict, device) -> dict:
    pixels = [p.to(device, non_blocking=True) for p in batch["pixel_values"]]
    out = {"input_ids": batch["input_ids"].to(device), "pixel_values": pixels or None, "use_cache": False}
    for key in ("attention_mask", "position_ids"):
        if batch.get(key) is not None:
            out[key] = batch[key].to(device)
    return out


def num_tokens(batch: dict) -> int:
    """Real (non-padding) tokens of a padded or packed batch."""
    if batch.get("attention_mask") is not None:
        return int(batch["attention_mask"].sum())
    return sum(sum(row) for row in batch["meta"]["seq_lens"])


def summed_loss(model, batch: dict, device, autocast=contextlib.nullcontext(), share_prefix: bool = False) -> torch.Tensor:
    """Summed next-token cross-entropy of a batch; logits are computed at supervised positions only.
    `share_prefix`: what rows start with in common runs once (`eve_vlm.model.prefix`): each group's
    prefix, images included, for independent turns; else the text prefix of the whole batch. The
    loss is the same function, for less compute."""
    groups = group_prefixes(batch, model.config.image_token_id) if share_prefix else None
    if groups is not None:
        split = GroupedPrefix(batch, groups, model.config.image_token_id)
        labels, p = split.labels.to(device), 0
        inputs = {"input_ids": split.ids.to(device), "attention_mask": split.attention_mask.to(device),
                  "position_ids": split.position_ids.to(device), "use_cache": False}
    else:
        labels, inputs = batch["labels"].to(device), model_inputs(batch, device)
        p = batch_shared_length(batch, model.config.image_token_id) if share_prefix else 0
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    with autocast:
        # the prefix runs through the decoder alone: a peft model's `.model` would be the whole model
        if groups is not None:
            inputs["cache"] = split.cache(lora.base(model), device)
        elif p:
            ids = inputs.pop("input_ids")
            inputs["cache"] = shared_cache(lora.base(model), ids[:1, :p], ids.shape[0])
            inputs["position_ids"] = torch.arange(p, ids.shape[1], device=device).expand(ids.shape[0], -1)
            inputs["input_ids"] = ids[:, p:]
        logits = model(**inputs, logits_to_keep=keep[:, p:]).logits
    return F.cross_entropy(logits.float(), labels[:, 1:][keep[:, :-1]], reduction="sum")


def train_step(model, micro: list[dict], world: int, autocast, trainable, max_norm: float, device,
               share_prefix: bool = False):
    """Forward and backward over the micro-batches of one optimizer step; returns (this rank's share
    of the loss, gradient norm before clipping). The optimizer step is the caller's."""
    targets = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
    targets = max(parallel.all_sum([targets], device)[0], 1)
    loss_sum = 0.0
    for batch in micro:
        ce = summed_loss(model, batch, device, autocast, share_prefix) / targets
        # FSDP averages gradients over ranks; the global-batch loss is their sum. A text-only
        # micro-batch with the LLM frozen reaches no trainable weight: nothing to backpropagate.
        if ce.requires_grad:
            (ce * world).backward()
        loss_sum += ce.item()
    grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
    if hasattr(grad_norm, "full_tensor"):  # a DTensor under FSDP
        grad_norm = grad_norm.full_tensor()
    return loss_sum, float(grad_norm)


def evaluate(model, data, device, autocast, share_prefix: bool = False) -> float:
    """Mean next-token loss over the held-out set, all ranks' tokens together."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in data:
            total += summed_loss(model, batch, device, autocast, share_prefix).item()
            count += int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
    parallel.reshard(model)
    model.train()
    total, count = parallel.all_sum([total, count], device)
    return total / max(count, 1)


def train(recipe: Recipe) -> dict:
    """Run one stage as the (validated) recipe says; returns a summary (also RUN/summary.json)."""
    rank, world, device = parallel.setup()
    try:
        return _train(recipe, rank, world, device)
    finally:
        parallel.teardown()


@dataclasses.dataclass
class Progress:
    """Where a run stands: the counters a checkpoint keeps and the summary reports."""
    step: int = 0
    samples: int = 0
    tokens: int = 0
    loss: float = math.nan
    eval_loss: float | None = None
    flops: float = 0.0  # useful FLOPs of this process's steps
    seconds: float = 0.0  # loop time of those steps
    signum: int | None = None  # the signal that stopped the run


@dataclasses.dataclass
class Run:
    """One stage in training: what `_setup` builds and the later steps share."""
    recipe: Recipe  # as run: train.bf16 holds the precision chosen
    rank: int
    world: int
    device: torch.device
    console: Console
    resume: str | None  # the checkpoint to continue from
    accum: int  # micro-batches per optimizer step and process
    model: torch.nn.Module
    processor: EveProcessor
    precision: Precision
    frozen: dict[str, str]  # fingerprints of the frozen weights, compared at the end
    adapters: Adapters | None  # LoRA's (train.lora), for the FLOP count
    data: TrainData
    held_out: EvalData | None
    total: int  # optimizer steps
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    counter: BadSampleCounter
    autocast: torch.autocast
    start_time: float
    progress: Progress = dataclasses.field(default_factory=Progress)

    @property
    def share(self) -> bool:
        # A shared prefix calls every layer twice before a backward, which FSDP's per-layer
        # all-gathers and the checkpointed replays (they drop the cache) are not built for.
        return self.world == 1 and not self.recipe.train.activation_checkpointing


class StepStats(NamedTuple):
    """One optimizer step's numbers, summed over all ranks."""
    loss: float
    lrs: dict[str, float]
    grad_norm: float
    tokens: float
    flops: float
    padding_flops: float
    bad: dict[str, int]
    stopping: bool  # a rank received a stop signal


def _train(recipe: Recipe, rank: int, world: int, device) -> dict:
    run = _setup(recipe, rank, world, device)
    if run.resume:
        _resume(run)
    _loop(run)
    return _finish(run)


def _setup(recipe: Recipe, rank: int, world: int, device) -> Run:
    """Everything before the first step; the recipe as run is saved to the run folder."""
    start_time, tcfg = time.time(), recipe.train
    console = Console(stderr=True, quiet=rank != 0)
    resume = checkpoint.resolve_resume(tcfg.resume, recipe.output.dir)
    accum = _grad_accum(tcfg, world)
    random.seed(tcfg.seed)
    np.random.seed(tcfg.seed)
    torch.manual_seed(tcfg.seed)  # same on every rank: an upcycled PEL starts identical everywhere
    model, processor = load_model(recipe.model, recipe.data)
    precision = _precision(recipe, model, world, device)
    console.print(f"{'bf16 autocast' if precision.bf16 else 'fp32'}: {precision.reason}")
    recipe = recipe.with_train(bf16=precision.bf16)  # the saved recipe says what this run did
    if rank == 0:
        os.makedirs(os.path.join(recipe.output.dir, "checkpoints"), exist_ok=True)
        save_recipe(recipe, os.path.join(recipe.output.dir, "recipe.yaml"))
    model, adapters = _trainable(model, tcfg)
    console.print(parameter_table(model, title=f"parameters (training {_training(tcfg)})"))
    model.to(device).train()
    parallel.parallelize(model, world, precision.bf16, tcfg.activation_checkpointing)
    frozen = fingerprint(model)
    data = build_data(recipe.data, processor, tcfg.micro_batch, accum, tcfg.seed, rank, world)
    total = _total_steps(tcfg, len(data), accum)
    optimizer = make_optimizer(model, tcfg)
    return Run(
        recipe=recipe, rank=rank, world=world, device=device, console=console, resume=resume, accum=accum,
        model=model, processor=processor, precision=precision, frozen=frozen, adapters=adapters, data=data,
        total=total,
        held_out=build_eval_data(recipe.eval, recipe.data, processor, tcfg.micro_batch, rank, world),
        optimizer=optimizer, scheduler=build_scheduler(optimizer, tcfg.schedule, tcfg.warmup_ratio, total),
        counter=BadSampleCounter(recipe.data.max_bad_fraction, recipe.data.min_seen), start_time=start_time,
        # Under FSDP the MixedPrecisionPolicy casts; in one process autocast does.
        autocast=torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision.bf16 and world == 1))


def _trainable(model, tcfg: TrainSection):
    """(the model to train, its LoRA adapters): `train.groups` trainable and the rest frozen, or
    with `train.lora` the adapters (and the PEL if in the groups) on a frozen base."""
    if tcfg.lora is None:
        freeze(model, tcfg.groups)
        return model, None
    adapters = Adapters(tcfg.lora.r, frozenset(lora.resolve_target(model, tcfg.lora.target)))
    return lora.apply(model, tcfg.lora, tcfg.groups), adapters


def _training(tcfg: TrainSection) -> str:
    if tcfg.lora is None:
        return ", ".join(tcfg.groups)
    target = tcfg.lora.target if isinstance(tcfg.lora.target, str) else ", ".join(tcfg.lora.target)
    return f"LoRA r={tcfg.lora.r} on {target}" + "".join(f", {g}" for g in tcfg.groups)


def _grad_accum(tcfg: TrainSection, world: int) -> int:
    per_step = tcfg.micro_batch * world
    if tcfg.global_batch % per_step:
        raise EveError(f"train.global_batch ({tcfg.global_batch}) is not a multiple of train.micro_batch x "
                       f"processes ({tcfg.micro_batch} x {world})")
    return tcfg.global_batch // per_step


def _precision(recipe: Recipe, model, world: int, device) -> Precision:
    tokens = recipe.train.micro_batch * recipe.data.max_length
    precision = choose_precision(recipe.train.bf16, device, model.config, tokens)
    if parallel.all_sum([precision.bf16], device)[0] not in (0, world):  # FSDP needs one dtype on every rank
        precision = Precision(False, f"the {world} processes measured differently ({precision.reason} here)")
    return precision


def _total_steps(tcfg: TrainSection, micro_batches: int, accum: int) -> int:
    total = tcfg.steps or int(tcfg.epochs * micro_batches // accum)
    if total < 1:
        raise EveError(f"{tcfg.epochs} epoch(s) of {micro_batches} micro-batches per process is not one step "
                       f"of {accum} micro-batches: lower train.global_batch or set train.steps")
    return total


def _state(run: Run) -> dict:
    """What a checkpoint keeps besides weights and optimizer; `_resume` reads it back."""
    p = run.progress
    return {"step": p.step, "world_size": run.world, "scheduler": run.scheduler.state_dict(),
            "data": run.data.state_dict(), "bad": run.counter.state_dict(), "rng": checkpoint.rng_state(),
            "samples": p.samples, "tokens": p.tokens}


def _resume(run: Run) -> None:
    """Continue exactly where the checkpoint stopped: schedule, data position, bad-sample counts, RNG."""
    state = checkpoint.load(run.resume, run.model, run.optimizer)
    run.scheduler.load_state_dict(state["scheduler"])
    run.data.load_state_dict(state["data"])
    run.counter.load_state_dict(state["bad"])
    checkpoint.set_rng_state(state["rng"])
    run.progress.step, run.progress.samples, run.progress.tokens = state["step"], state["samples"], state["tokens"]
    run.console.print(f"resumed from {run.resume} at step {run.progress.step}")


def _loop(run: Run) -> None:
    """Optimizer steps until the total or a stop signal; every step is logged, checkpoints as the recipe says."""
    p, out = run.progress, run.recipe.output
    writer = MetricsWriter(out.dir, p.step, out.tensorboard) if run.rank == 0 else None
    if run.held_out is not None and p.step == 0:
        _eval_first(run, writer)
    trainable = [t for t in run.model.parameters() if t.requires_grad]
    batches = iter(run.data)
    bar = tqdm(total=run.total, initial=p.step, disable=run.rank != 0 or not run.recipe.train.progress,
               dynamic_ncols=True, unit="step")
    try:
        with StopOnSignal() as stop:
            t0 = time.perf_counter()
            while p.step < run.total:
                stats = _step(run, [next(batches) for _ in range(run.accum)], trainable, stop.signum is not None)
                # the whole loop period: the previous step's logging and checkpointing count too
                elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
                record = _record(run, stats, elapsed)
                if _eval_due(run):
                    t_eval = time.perf_counter()
                    p.eval_loss = record["eval_loss"] = _evaluate(run)
                    t0 += time.perf_counter() - t_eval  # tokens/s is about training
                if writer:
                    writer.log(record)
                shown = {"eval": f"{p.eval_loss:.4f}"} if p.eval_loss is not None else {}
                bar.set_postfix(loss=f"{p.loss:.4f}", **shown, lr=f"{max(stats.lrs.values()):.2e}",
                                tok_s=f"{stats.tokens / elapsed:,.0f}")
                bar.update()
                if stats.stopping or _checkpoint_due(run):
                    path = checkpoint.save(out.dir, p.step, run.model, run.optimizer, _state(run),
                                           run.recipe.checkpoint.keep)
                    run.console.print(f"saved {path}")
                if stats.stopping:
                    break
            p.signum = stop.signum
    finally:  # a failed run lets go of metrics.jsonl (its lock) at once, not when collected
        bar.close()
        if writer:
            writer.close()


def _step(run: Run, micro: list[dict], trainable: list, stop_requested: bool) -> StepStats:
    """One optimizer step over the micro-batches; advances the progress counters."""
    tcfg, p = run.recipe.train, run.progress
    max_norm = tcfg.max_grad_norm if tcfg.max_grad_norm is not None else math.inf
    loss_sum, grad_norm = train_step(run.model, micro, run.world, run.autocast, trainable, max_norm, run.device,
                                     run.share)
    lrs = {f"lr/{g['name']}": g["lr"] for g in run.optimizer.param_groups}
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    for batch in micro:
        run.counter.update(batch, check=False)
    flops = step_flops(run.model.config, tcfg.groups, micro, run.share, run.adapters)
    loss, n_samples, n_tokens, stopping, useful, wasted = parallel.all_sum(
        [loss_sum, sum(len(b["meta"]["ids"]) for b in micro), sum(num_tokens(b) for b in micro), stop_requested,
         flops.useful, flops.padding], run.device)
    p.step, p.loss, p.samples, p.tokens = p.step + 1, loss, p.samples + int(n_samples), p.tokens + int(n_tokens)
    bad = _merged_bad(run.counter)
    run.counter.check(bad["bad/skipped"], bad["bad/seen"])  # all ranks see the same totals
    return StepStats(loss, lrs, grad_norm, n_tokens, useful, wasted, bad, bool(stopping))


def _record(run: Run, stats: StepStats, elapsed: float) -> dict:
    """The metrics line of a step that took `elapsed` seconds."""
    p, tcfg = run.progress, run.recipe.train
    p.flops, p.seconds = p.flops + stats.flops, p.seconds + elapsed
    epoch = run.data.epoch + run.data.consumed / (len(run.data) * tcfg.micro_batch)
    return {"step": p.step, "loss": stats.loss, **stats.lrs, "grad_norm": stats.grad_norm,
            "tokens_per_s": stats.tokens / elapsed, "step_time": elapsed, "samples": p.samples,
            "flops": stats.flops, "padding_flops": stats.padding_flops,
            **_rates(stats.flops, elapsed, tcfg.peak_gflops), "tokens": p.tokens, "epoch": epoch, **stats.bad}


def _checkpoint_due(run: Run) -> bool:
    every, step = run.recipe.checkpoint.every, run.progress.step
    return bool(every and step % every == 0 and step < run.total)  # the last step writes the model instead


def _eval_first(run: Run, writer: MetricsWriter | None) -> None:
    """The held-out loss of the model the stage starts from, logged as step 0."""
    run.progress.eval_loss = _evaluate(run)
    run.console.print(f"eval_loss before step 1: {run.progress.eval_loss:.4f} "
                      f"({len(run.held_out)} samples per process)")
    if writer:
        writer.log({"step": 0, "eval_loss": run.progress.eval_loss})


def _eval_due(run: Run) -> bool:
    every, step = run.recipe.eval.every, run.progress.step
    return run.held_out is not None and (step == run.total or bool(every and step % every == 0))


def _evaluate(run: Run) -> float:
    return evaluate(run.model, run.held_out, run.device, run.autocast, run.share)


def _finish(run: Run) -> dict:
    """After the loop: prove the frozen weights stayed frozen, write the model (if the run completed),
    the bad-sample report and the summary."""
    p, run_dir = run.progress, run.recipe.output.dir
    moved = changed(run.frozen, fingerprint(run.model))
    if parallel.all_sum([len(moved)], run.device)[0]:
        raise RuntimeError(f"frozen parameters changed during training (a bug: they must stay bit-identical): "
                           f"{moved[:10]}{' ...' if len(moved) > 10 else ''}")
    completed = p.step >= run.total
    model_dir = os.path.join(run_dir, "model")
    if completed and run.adapters is not None:  # adapter/ and the merged model/
        save_lora_final(run.model, run.processor, run_dir, run.recipe.output.dtype, run.rank)
    elif completed:
        save_final(run.model, run.processor, model_dir, run.recipe.output.dtype, run.rank)
    reports = parallel.all_gather(run.counter.report())
    summary = {
        "run_dir": run_dir, "completed": completed, "steps": p.step, "total_steps": run.total,
        "stopped_by": signal.Signals(p.signum).name if p.signum else None, "final_loss": p.loss,
        "eval_loss": p.eval_loss,
        "model_dir": model_dir if completed else None,
        "adapter_dir": os.path.join(run_dir, "adapter") if completed and run.adapters is not None else None,
        "processes": run.world, "grad_accum": run.accum,
        "parameters": group_counts(run.model), "samples": p.samples, "tokens": p.tokens,
        "bad_samples": {"skipped": sum(r["bad"] for r in reports), "seen": sum(r["seen"] for r in reports)},
        "wall_s": time.time() - run.start_time, "dtype": run.precision.dtype, "dtype_reason": run.precision.reason,
        **_rates(p.flops, p.seconds, run.recipe.train.peak_gflops),
    }
    if run.rank == 0:
        with open(os.path.join(run_dir, "bad_samples.json"), "w") as f:
            json.dump(reports, f, indent=1)
        with open(os.path.join(run_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=1)
    return summary


def completed_summary(run_dir: str) -> dict | None:
    """The summary of a run that completed; None when there is none or the run was stopped."""
    path = os.path.join(run_dir, "summary.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        summary = json.load(f)
    return summary if summary.get("completed") else None


def train_or_reuse(recipe: Recipe) -> dict:
    """Train, or reuse a completed run; a stopped or killed one resumes from its last checkpoint."""
    return completed_summary(recipe.output.dir) or train(recipe.with_train(resume=recipe.train.resume or "auto"))


def _rates(flops: float, seconds: float, peak_gflops: float | None) -> dict:
    """Achieved useful GFLOP/s (all processes together) and, with a known peak, its fraction (MFU)."""
    rate = flops / seconds / 1e9 if seconds > 0 else 0.0
    return {"gflops_per_s": rate, **({"mfu": rate / peak_gflops} if peak_gflops else {})}


def _merged_bad(counter: BadSampleCounter) -> dict:
    """Bad-sample counts by reason over all ranks, for the metrics."""
    totals, seen = {}, 0
    for counts, n_seen in parallel.all_gather((dict(counter.counts), counter.seen)):
        seen += n_seen
        for reason, n in counts.items():
            totals[f"bad/{reason}"] = totals.get(f"bad/{reason}", 0) + n
    return {"bad/seen": seen, "bad/skipped": sum(totals.values()), **dict(sorted(totals.items()))}
