"""A training checkpoint -> a self-contained model folder, the same as the one a stage writes when
it completes, so that a running or stopped stage can be evaluated or served at any checkpoint.

Checkpoints hold only the trainable weights; the frozen ones are rebuilt from the stage's model
source, as resume does, following the recipe the run saved next to its checkpoints.

A LoRA checkpoint (it holds its adapter config, see `lora.saved_config`) exports as the merged model
folder (`merge`, the default) or as the adapter alone in peft's format (`adapter_only`)."""

import os
import shutil

import torch

from ..errors import EveError
from ..model import EveForConditionalGeneration
from . import checkpoint, lora
from .build import freeze, load_model
from .recipe import load_recipe


def save_final(model, processor, out_dir: str, dtype: str, rank: int) -> None:
    """Gather the full weights (collective) and write a self-contained folder from rank 0."""
    full = _gather(model, rank)
    if full is not None:
        _write(full, processor, out_dir, dtype)


def save_lora_final(model, processor, run_dir: str, dtype: str, rank: int) -> None:
    """The outputs of a LoRA stage (collective): RUN/adapter in peft's format and RUN/model, the
    adapters merged into the base weights."""
    full = _gather(model, rank)
    if full is not None:
        lora.save_adapter(full, os.path.join(run_dir, "adapter"))
        _write(lora.merge(full), processor, os.path.join(run_dir, "model"), dtype)


def _gather(model, rank: int):
    """The full model rebuilt on rank 0 from the (possibly sharded) weights, adapters included;
    None on the other ranks."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank != 0:
        return None
    with torch.device("meta"):
        fresh = EveForConditionalGeneration(model.config)
        if lora.is_lora(model):
            fresh = lora.wrap(fresh, model.peft_config[model.active_adapter])
    fresh.load_state_dict(state, assign=True)
    lora.base(fresh).tie_weights()
    fresh.generation_config = model.generation_config
    return fresh


def _write(model, processor, out_dir: str, dtype: str) -> None:
    model.to(getattr(torch, dtype))
    tmp = out_dir + ".tmp"
    model.save_pretrained(tmp)
    processor.for_inference().save_pretrained(tmp)
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    os.rename(tmp, out_dir)


def export_checkpoint(path: str, out_dir: str, recipe_path: str | None = None, merge: bool = False,
                      adapter_only: bool = False) -> str:
    """`path`: a RUN/checkpoints/step-N folder, or a run folder (its latest checkpoint).
    `merge` / `adapter_only` (LoRA checkpoints only): the merged model folder / the adapter."""
    if merge and adapter_only:
        raise EveError("--merge and --adapter-only exclude each other")
    path = os.path.normpath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        run_dir, path = path, checkpoint.latest(path)
        if path is None:
            raise EveError(f"{run_dir} has no complete checkpoint yet")
    if not os.path.isfile(os.path.join(path, ".metadata")):
        raise EveError(f"{path} is not a complete checkpoint (no .metadata); complete ones are "
                       "RUN/checkpoints/step-N folders")
    run_dir = os.path.dirname(os.path.dirname(path))
    recipe_path = recipe_path or os.path.join(run_dir, "recipe.yaml")
    if not os.path.isfile(recipe_path):
        raise EveError(f"{recipe_path} does not exist: pass the stage's recipe with --recipe")
    if os.path.exists(out_dir) and (not os.path.isdir(out_dir) or os.listdir(out_dir)):
        raise EveError(f"{out_dir} exists and is not an empty folder")
    config = lora.saved_config(path)
    if config is None and (merge or adapter_only):
        raise EveError(f"{path} is not a LoRA checkpoint (no {lora.CONFIG_FILE}): --merge and --adapter-only "
                       "apply to LoRA runs; export it without them")
    recipe = load_recipe(recipe_path, [])
    model, processor = load_model(recipe.model, recipe.data)
    # the checkpoint's keys are those of the trainable weights: make the same ones trainable
    if config is None:
        freeze(model, recipe.train.groups)
    else:
        model = lora.wrap(model, config)
    checkpoint.load_weights(path, model)
    if adapter_only:
        return lora.save_adapter(model, out_dir)
    save_final(lora.merge(model) if config else model, processor, out_dir, recipe.output.dtype, rank=0)
    return out_dir
