"""`train(recipe)`: one entry point for every stage, in one process or under torchrun.

    eve train recipes/evev2-7b/stage1.yaml train.lr=1e-4
    torchrun --nproc_per_node=8 -m eve_vlm.train train recipes/evev2-7b/stage2.2.yaml

A step: take grad_accum micro-batches, count the supervised tokens of the whole global batch (all
ranks), and backpropagate each micro-batch's summed cross-entropy divided by that count. The loss is
then the token mean over the global batch, independent of how it is split into micro-batches and
processes, so 1 and N processes train the same model.
"""

import contextlib
import json
import math
import os
import random
import shutil
import signal
import threading
import time

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from tqdm import tqdm

from ..data.bad import BadSampleCounter
from ..errors import EveError
from ..model import EveForConditionalGeneration
from ..model.groups import group_counts, param_group, parameter_table
from ..model.prefix import GroupedPrefix, batch_shared_length, group_prefixes, shared_cache
from ..processing.chat import IGNORE_INDEX
from . import checkpoint, parallel
from .build import changed, fingerprint, freeze, load_model
from .data import build_data, build_eval_data
from .flops import step_flops
from .metrics import MetricsWriter
from .precision import Precision
from .precision import choose as choose_precision
from .recipe import save_recipe


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


def lr_lambda(schedule: str, warmup: int, total: int):
    """HF's linear warm-up then cosine decay to 0 (the official scripts' `cosine`), or constant."""
    def f(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        if schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    return f


def make_optimizer(model, cfg: dict) -> torch.optim.AdamW:
    by_group = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            by_group.setdefault(param_group(name), []).append(p)
    pel_lr = cfg["pel_lr"] if cfg["pel_lr"] is not None else cfg["lr"]
    groups = [{"params": ps, "lr": pel_lr if g == "pel" else cfg["lr"], "name": g} for g, ps in by_group.items()]
    # fused: one kernel over all tensors; the per-tensor default took ~14 % of a CPU step (profiled)
    return torch.optim.AdamW(groups, lr=cfg["lr"], betas=tuple(cfg["betas"]), eps=cfg["eps"],
                             weight_decay=cfg["weight_decay"], fused=True)


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
        if groups is not None:
            inputs["cache"] = split.cache(model, device)
        elif p:
            ids = inputs.pop("input_ids")
            inputs["cache"] = shared_cache(model, ids[:1, :p], ids.shape[0])
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


def save_final(model, processor, out_dir: str, dtype: str, rank: int) -> None:
    """Gather the full weights (collective) and write a self-contained folder from rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return
    with torch.device("meta"):
        fresh = EveForConditionalGeneration(model.config)
    fresh.load_state_dict(state, assign=True)
    fresh.tie_weights()
    fresh.generation_config = model.generation_config
    fresh.to(getattr(torch, dtype))
    tmp = out_dir + ".tmp"
    fresh.save_pretrained(tmp)
    processor.for_inference().save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)


def train(recipe: dict) -> dict:
    """Run one stage as the (validated) recipe says; returns a summary (also RUN/summary.json)."""
    rank, world, device = parallel.setup()
    try:
        return _train(recipe, rank, world, device)
    finally:
        parallel.teardown()


def _train(recipe: dict, rank: int, world: int, device) -> dict:
    start_time = time.time()
    tcfg, run_dir = recipe["train"], recipe["output"]["dir"]
    console = Console(stderr=True, quiet=rank != 0)
    resume = checkpoint.resolve_resume(tcfg["resume"], run_dir)
    per_step = tcfg["micro_batch"] * world
    if tcfg["global_batch"] % per_step:
        raise EveError(f"train.global_batch ({tcfg['global_batch']}) is not a multiple of train.micro_batch x "
                       f"processes ({tcfg['micro_batch']} x {world})")
    accum = tcfg["global_batch"] // per_step

    random.seed(tcfg["seed"])
    np.random.seed(tcfg["seed"])
    torch.manual_seed(tcfg["seed"])  # same on every rank: an upcycled PEL starts identical everywhere
    model, processor = load_model(recipe["model"], recipe["data"])
    precision = choose_precision(tcfg["bf16"], device, model.config, tcfg["micro_batch"] * recipe["data"]["max_length"])
    if parallel.all_sum([precision.bf16], device)[0] not in (0, world):  # FSDP needs one dtype on every rank
        precision = Precision(False, f"the {world} processes measured differently ({precision.reason} here)")
    console.print(f"{'bf16 autocast' if precision.bf16 else 'fp32'}: {precision.reason}")
    tcfg = {**tcfg, "bf16": precision.bf16}  # the saved recipe says what this run did
    recipe = {**recipe, "train": tcfg}
    if rank == 0:
        os.makedirs(os.path.join(run_dir, "checkpoints"), exist_ok=True)
        save_recipe(recipe, os.path.join(run_dir, "recipe.yaml"))
    freeze(model, tcfg["groups"])
    console.print(parameter_table(model, title=f"parameters (training {', '.join(tcfg['groups'])})"))
    if tcfg["activation_checkpointing"]:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.to(device).train()
    if world > 1:
        parallel.shard(model, tcfg["bf16"])
    frozen = fingerprint(model)
    data = build_data(recipe["data"], processor, tcfg["micro_batch"], accum, tcfg["seed"], rank, world)
    total = tcfg["steps"] or int(tcfg["epochs"] * len(data) // accum)
    if total < 1:
        raise EveError(f"{tcfg['epochs']} epoch(s) of {len(data)} micro-batches per process is not one step "
                       f"of {accum} micro-batches: lower train.global_batch or set train.steps")
    optimizer = make_optimizer(model, tcfg)
    warmup = math.ceil(tcfg["warmup_ratio"] * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tcfg["schedule"], warmup, total))
    counter = BadSampleCounter(recipe["data"]["max_bad_fraction"], recipe["data"]["min_seen"])
    step, samples, tokens = 0, 0, 0
    run_flops, run_time = 0.0, 0.0  # useful FLOPs and loop time of this process's steps
    if resume:
        state = checkpoint.load(resume, model, optimizer)
        scheduler.load_state_dict(state["scheduler"])
        data.load_state_dict(state["data"])
        counter.load_state_dict(state["bad"])
        checkpoint.set_rng_state(state["rng"])
        step, samples, tokens = state["step"], state["samples"], state["tokens"]
        console.print(f"resumed from {resume} at step {step}")
    writer = MetricsWriter(run_dir, step, recipe["output"]["tensorboard"]) if rank == 0 else None
    # Under FSDP the MixedPrecisionPolicy casts; in one process autocast does.
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=tcfg["bf16"] and world == 1)
    # A shared prefix calls every layer twice before a backward, which FSDP's per-layer
    # all-gathers and the checkpointed replays (they drop the cache) are not built for.
    share = world == 1 and not tcfg["activation_checkpointing"]
    held_out = build_eval_data(recipe["eval"], recipe["data"], processor, tcfg["micro_batch"], rank, world)
    eval_every, eval_loss = recipe["eval"]["every"], None
    if held_out is not None and step == 0:
        eval_loss = evaluate(model, held_out, device, autocast, share)
        console.print(f"eval_loss before step 1: {eval_loss:.4f} ({len(held_out)} samples per process)")
        if writer:
            writer.log({"step": 0, "eval_loss": eval_loss})
    trainable = [p for p in model.parameters() if p.requires_grad]
    max_norm = tcfg["max_grad_norm"] if tcfg["max_grad_norm"] is not None else math.inf
    every = recipe["checkpoint"]["every"]
    batches = iter(data)
    bar = tqdm(total=total, initial=step, disable=rank != 0 or not tcfg["progress"], dynamic_ncols=True, unit="step")
    loss = math.nan
    with StopOnSignal() as stop:
        t0 = time.perf_counter()
        while step < total:
            micro = [next(batches) for _ in range(accum)]
            loss_sum, grad_norm = train_step(model, micro, world, autocast, trainable, max_norm, device, share)
            lrs = {f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups}
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            for batch in micro:
                counter.update(batch, check=False)
            n_samples = sum(len(b["meta"]["ids"]) for b in micro)
            flops = step_flops(model.config, tcfg["groups"], micro, share)
            loss, n_samples, n_tokens, stopping, useful, wasted = parallel.all_sum(
                [loss_sum, n_samples, sum(num_tokens(b) for b in micro), stop.signum is not None,
                 flops.useful, flops.padding], device)
            samples, tokens = samples + int(n_samples), tokens + int(n_tokens)
            bad = _merged_bad(counter)
            counter.check(bad["bad/skipped"], bad["bad/seen"])  # all ranks see the same totals
            # the whole loop period: the previous step's logging and checkpointing count too
            elapsed, t0 = time.perf_counter() - t0, time.perf_counter()
            run_flops, run_time = run_flops + useful, run_time + elapsed
            record = {"step": step, "loss": loss, **lrs, "grad_norm": grad_norm,
                      "tokens_per_s": n_tokens / elapsed, "step_time": elapsed, "samples": samples,
                      "flops": useful, "padding_flops": wasted, **_rates(useful, elapsed, tcfg["peak_gflops"]),
                      "tokens": tokens, "epoch": data.epoch + data.consumed / (len(data) * tcfg["micro_batch"]),
                      **bad}
            if held_out is not None and (step == total or (eval_every and step % eval_every == 0)):
                t_eval = time.perf_counter()
                eval_loss = record["eval_loss"] = evaluate(model, held_out, device, autocast, share)
                t0 += time.perf_counter() - t_eval  # tokens/s is about training
            if writer:
                writer.log(record)
            shown = {"eval": f"{eval_loss:.4f}"} if eval_loss is not None else {}
            bar.set_postfix(loss=f"{loss:.4f}", **shown, lr=f"{max(lrs.values()):.2e}",
                            tok_s=f"{n_tokens / elapsed:,.0f}")
            bar.update()
            if stopping or (every and step % every == 0 and step < total):
                trainer_state = {"step": step, "world_size": world, "scheduler": scheduler.state_dict(),
                                 "data": data.state_dict(), "bad": counter.state_dict(),
                                 "rng": checkpoint.rng_state(), "samples": samples, "tokens": tokens}
                path = checkpoint.save(run_dir, step, model, optimizer, trainer_state, recipe["checkpoint"]["keep"])
                console.print(f"saved {path}")
            if stopping:
                break
        signum = stop.signum
    bar.close()
    if writer:
        writer.close()

    moved = changed(frozen, fingerprint(model))
    if parallel.all_sum([len(moved)], device)[0]:
        raise RuntimeError(f"frozen parameters changed during training (a bug: they must stay bit-identical): "
                           f"{moved[:10]}{' ...' if len(moved) > 10 else ''}")
    completed = step >= total
    model_dir = os.path.join(run_dir, "model")
    if completed:
        save_final(model, processor, model_dir, recipe["output"]["dtype"], rank)
    reports = parallel.all_gather(counter.report())
    summary = {
        "run_dir": run_dir, "completed": completed, "steps": step, "total_steps": total,
        "stopped_by": signal.Signals(signum).name if signum else None, "final_loss": loss,
        "eval_loss": eval_loss,
        "model_dir": model_dir if completed else None, "processes": world, "grad_accum": accum,
        "parameters": group_counts(model), "samples": samples, "tokens": tokens,
        "bad_samples": {"skipped": sum(r["bad"] for r in reports), "seen": sum(r["seen"] for r in reports)},
        "wall_s": time.time() - start_time, "dtype": precision.dtype, "dtype_reason": precision.reason,
        **_rates(run_flops, run_time, tcfg["peak_gflops"]),
    }
    if rank == 0:
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


def train_or_reuse(recipe: dict) -> dict:
    """Train, or reuse a completed run; a stopped or killed one resumes from its last checkpoint."""
    return completed_summary(recipe["output"]["dir"]) or train(
        {**recipe, "train": {**recipe["train"], "resume": recipe["train"]["resume"] or "auto"}})


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
