"""Checkpoints: RUN/checkpoints/step-N, written through torch.distributed.checkpoint (DCP) by every
rank (sharded under FSDP, whole in one process), plus one small `trainer-rankR.pt` per rank (step,
scheduler, RNG states, data position, bad-sample counts). A checkpoint is written to step-N.tmp and
renamed when complete, so a crash at any moment leaves either a whole checkpoint or none.

Only trainable parameters are saved: frozen ones are rebuilt from the recipe's model source, and the
end-of-stage fingerprint check proves they never moved. A LoRA model's checkpoint also holds its
adapter config (`lora.CONFIG_FILE`), so that export can rebuild the same adapters.
"""

import os
import random
import re
import shutil
import warnings

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_state_dict,
                                                     set_model_state_dict, set_state_dict)

from ..errors import EveError
from .lora import save_config

# Frozen weights come from the stage's model source (and are fingerprinted), so checkpoints skip
# them; loading is then non-strict, but dcp.load still fails on any trainable tensor the
# checkpoint lacks, since it fills exactly the keys that get_state_dict listed.
OPTIONS = StateDictOptions(ignore_frozen_params=True)
LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)
_STEP = re.compile(r"step-(\d+)$")


def checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """Complete checkpoints of a run, oldest first."""
    root = os.path.join(run_dir, "checkpoints")
    found = [(int(m.group(1)), os.path.join(root, d)) for d in os.listdir(root) if (m := _STEP.match(d))] \
        if os.path.isdir(root) else []
    return sorted(found)


def latest(run_dir: str) -> str | None:
    found = checkpoints(run_dir)
    return found[-1][1] if found else None


def _dcp(fn, state: dict, path: str) -> None:
    """dcp.save / dcp.load, in one process too (where DCP warns about exactly that, every time)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        fn(state, checkpoint_id=path, no_dist=not dist.is_initialized())


def _barrier():
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: str, step: int, model, optimizer, trainer_state: dict, keep: int) -> str:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    final = os.path.join(run_dir, "checkpoints", f"step-{step}")
    tmp = final + ".tmp"
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
        os.makedirs(tmp)
        save_config(model, tmp)
    _barrier()
    model_state, optim_state = get_state_dict(model, optimizer, options=OPTIONS)
    _dcp(dcp.save, {"model": model_state, "optim": optim_state}, tmp)
    with open(os.path.join(tmp, f"trainer-rank{rank}.pt"), "wb") as f:
        torch.save(trainer_state, f)
        f.flush()
        os.fsync(f.fileno())
    _barrier()
    if rank == 0:
        shutil.rmtree(final, ignore_errors=True)
        os.rename(tmp, final)
        for _, old in checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old)
    _barrier()
    return final


def load(path: str, model, optimizer) -> dict:
    """Collective: restores model and optimizer in place; returns this rank's trainer state."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    state_file = os.path.join(path, f"trainer-rank{rank}.pt")
    if not os.path.isfile(state_file):
        raise EveError(f"{path} is not a complete checkpoint (no {os.path.basename(state_file)})")
    trainer_state = torch.load(state_file, weights_only=True)
    if trainer_state["world_size"] != world:
        raise EveError(f"{path} was written by {trainer_state['world_size']} processes; resume it with the "
                       f"same number (this run has {world}) so that every rank continues its own data stream")
    model_state, optim_state = get_state_dict(model, optimizer, options=OPTIONS)
    _dcp(dcp.load, {"model": model_state, "optim": optim_state}, path)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optim_state, options=LOAD_OPTIONS)
    return trainer_state


def load_weights(path: str, model) -> None:
    """Only the model's trainable weights (no optimizer state), in one process: for export."""
    state = get_model_state_dict(model, options=OPTIONS)
    _dcp(dcp.load, {"model": state}, path)
    set_model_state_dict(model, state, options=LOAD_OPTIONS)


def resolve_resume(resume: str | None, run_dir: str) -> str | None:
    """`train.resume` -> the checkpoint folder to start from, or None for a fresh start."""
    if resume is None:
        if checkpoints(run_dir) or os.path.exists(os.path.join(run_dir, "metrics.jsonl")):
            raise EveError(f"{run_dir} already holds a run; continue it with train.resume=auto, or choose "
                           "another output.dir")
        return None
    if resume == "auto":
        return latest(run_dir)
    if not os.path.isdir(resume):
        raise EveError(f"train.resume: no checkpoint folder {resume}")
    return resume
