"""The model side of a stage: load or upcycle the model, build the vision copies, freeze groups,
and prove at the end that what was frozen stayed frozen."""

import hashlib
import json
import os

import torch
from torch import nn
from transformers.initialization import no_init_weights

from ..convert.upcycle import load_text_weights
from ..errors import EveError
from ..model import EveConfig, EveForConditionalGeneration
from ..model.config import EVEV2
from ..model.groups import param_group
from ..processing import EveImageProcessor, EveProcessor, load_tokenizer
from .recipe import DataSection, ModelSection


def is_eve_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    with open(config) as f:
        return json.load(f).get("model_type") == "eve"


def load_model(model_cfg: ModelSection, data_cfg: DataSection) -> tuple[EveForConditionalGeneration, EveProcessor]:
    """The recipe's `model` section -> (fp32 model, processor set up from the `data` section)."""
    source, decoupled = model_cfg.source, model_cfg.decoupled
    processor = None
    if is_eve_folder(source):
        if model_cfg.config:
            raise EveError(f"model.config only applies when upcycling an LLM; {source} is an eve model folder")
        model = EveForConditionalGeneration.from_pretrained(source, dtype=torch.float32)
        try:
            processor = EveProcessor.from_pretrained(source)
        except (OSError, ValueError, TypeError):
            tokenizer = load_tokenizer(source)  # a folder with a tokenizer but no processor files
    else:
        from ..convert.upcycle import upcycle

        folder, gguf = source, None
        if not os.path.exists(source) and (source.startswith(("/", ".", "~")) or source.count("/") > 1):
            # Not a hub id ("namespace/name") either: say so instead of the hub client's complaint.
            raise EveError(f"model.source: {source} does not exist (did the stage that writes it finish?)")
        if source == "smollm2":
            from ..assets import smollm2_gguf

            folder, gguf = smollm2_gguf()
        elif source.endswith(".gguf"):
            folder, gguf = os.path.split(source)
        overrides = dict(model_cfg.config)
        if decoupled is not None and not model_cfg.init_vision:
            overrides["decoupled"] = decoupled
        model, tokenizer = upcycle(folder or ".", gguf_file=gguf, dtype=torch.float32, **overrides)
    if model_cfg.tokenizer:
        tokenizer, processor = load_tokenizer(model_cfg.tokenizer), None
    if model_cfg.init_vision:
        model = init_vision(model, decoupled)
    elif decoupled is not None and set(decoupled) != set(model.config.decoupled):
        raise EveError(f"model.decoupled is {decoupled} but {source} has {model.config.decoupled}; set "
                       "model.init_vision=true to build the vision copies from the LLM weights")
    if processor is None:
        processor = EveProcessor(EveImageProcessor(), tokenizer)
    processor.template = data_cfg.template
    processor.image_processor.max_size = data_cfg.max_size
    processor.image_processor.resize_mode = data_cfg.resize_mode
    if processor.image_token_id != model.config.image_token_id:
        raise EveError(f"the tokenizer's image placeholder id is {processor.image_token_id}, the model's "
                       f"image_token_id is {model.config.image_token_id}: they must be the same token")
    return model, processor


def init_vision(model: EveForConditionalGeneration, decoupled=None) -> EveForConditionalGeneration:
    """A new model whose vision copies (`decoupled`; default: those of `model`, or all of EVEv2's
    when it has none) are exact copies of the LLM weights they shadow, as the official
    `repeat_moe.py` does between stage 1 and stage 2.1. Everything else is `model`'s."""
    decoupled = list(decoupled or model.config.decoupled or EVEV2)
    config = EveConfig.from_dict({**model.config.to_dict(), "decoupled": decoupled})
    with no_init_weights():
        new = EveForConditionalGeneration(config)
    new.to(dtype=model.dtype)
    load_text_weights(new, {k: v for k, v in model.state_dict().items() if ".vision_" not in k})
    new.tie_weights()
    new.generation_config = model.generation_config
    return new


def init_vision_folder(model_dir: str, out_dir: str, decoupled=None) -> str:
    """`eve init-vision`: MODEL_DIR (e.g. a stage-1 model, no vision copies) -> OUT_DIR with copies."""
    model = init_vision(EveForConditionalGeneration.from_pretrained(model_dir), decoupled)
    model.save_pretrained(out_dir)
    try:
        EveProcessor.from_pretrained(model_dir).save_pretrained(out_dir)
    except (OSError, ValueError, TypeError):
        load_tokenizer(model_dir).save_pretrained(out_dir)
    return out_dir


def freeze(model: nn.Module, groups) -> None:
    """Train exactly the parameter groups in `groups` (see model/groups.py)."""
    present = set()
    for name, p in model.named_parameters():
        present.add(param_group(name))
        p.requires_grad_(param_group(name) in groups)
    for g in groups:
        if g not in present:
            hint = "; set model.init_vision=true to create them" if g == "vision" else ""
            raise EveError(f"train.groups has {g!r} but the model has no {g} parameters{hint}")


def fingerprint(model: nn.Module) -> dict[str, str]:
    """A hash of the bytes of every frozen parameter (of this rank's shard under FSDP)."""
    out = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            t = p.to_local() if hasattr(p, "to_local") else p
            data = t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy()
            out[name] = hashlib.sha1(data).hexdigest()
    return out


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return [name for name in before if after.get(name) != before[name]]
