"""LoRA fine-tuning through peft: adapters on the decoder's linear layers, the PEL trained fully or
frozen, the base weights never touched.

A `vision` target adapts only the `vision_*` copies: a text-only forward never runs them (see
`model.decoupled.Routing.TEXT_ONLY`), so every text-only answer stays the base model's, bit for
bit, however long the adapter trains. The PEL, when `train.groups` holds `pel`, is one of peft's
`modules_to_save`: a trained copy that peft saves in the adapter, so the adapter alone restores the
fine-tuned model on the base folder.

The life of a LoRA stage:

    model = apply(model, spec, groups)        # instead of build.freeze: only adapters (+ PEL) train
    ... train; checkpoint.save/load work unchanged (they keep the trainable tensors only and
    record the adapter config, see `saved_config`) ...
    save_adapter(model, RUN/adapter)          # peft's format, loads on the base folder
    merged = merge(model)                     # a plain EveForConditionalGeneration -> RUN/model
"""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
from dataclasses import dataclass, field

import torch
from pydantic import ConfigDict, with_config
from torch import nn

from ..errors import EveError
from ..extras import needs

TARGETS = ("vision", "llm", "all")
# train.groups under LoRA: the decoder trains through its adapters, the PEL fully or not at all
LORA_GROUPS = ("pel",)
PEL = "model.patch_embed"
CONFIG_FILE = "adapter_config.json"  # peft's name: a checkpoint folder holding it is a LoRA one


def _peft():
    """peft, imported where it is used: checkpoints and plain training run without it."""
    with needs("lora", "LoRA fine-tuning (train.lora)"):
        import peft
    return peft
_LAYER = re.compile(r"\.layers\.\d+\.")


@with_config(ConfigDict(extra="forbid"))  # the recipe's `train.lora` section is validated as this class
@dataclass(frozen=True)
class LoraSpec:
    """`train.lora`. `target`: "vision" (every `vision_*` linear of the decoder), "llm" (the text
    linears of the decoder), "all" (both), or a list of glob patterns matched against full module
    names (`model.layers.0.self_attn.q_proj`) or their dotted suffixes (`q_proj`, `vision_mlp.*`).
    `modules_to_save`: further modules trained fully and saved in the adapter (peft's meaning).
    `qlora`: a 4-bit NF4 base through bitsandbytes (CUDA only)."""

    r: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target: str | tuple[str, ...] = "vision"
    modules_to_save: tuple[str, ...] = field(default_factory=tuple)
    qlora: bool = False

    def __post_init__(self):
        if isinstance(self.target, str) and self.target not in TARGETS:
            raise EveError(f"train.lora.target: {self.target!r} is not one of {TARGETS} (or a list of module "
                           "name patterns)")
        if not isinstance(self.target, str):
            object.__setattr__(self, "target", tuple(self.target))
        object.__setattr__(self, "modules_to_save", tuple(self.modules_to_save))
        if self.r < 1:
            raise EveError(f"train.lora.r must be at least 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise EveError(f"train.lora.dropout must be in [0, 1), got {self.dropout}")


def linear_names(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def _summary(names: list[str]) -> str:
    """Module names with the layer index folded (`model.layers.*.mlp.up_proj`), each kind once."""
    return ", ".join(dict.fromkeys(_LAYER.sub(".layers.*.", n) for n in names))


def _in_decoder(name: str) -> bool:
    return _LAYER.search(name) is not None


def resolve_target(model: nn.Module, target) -> list[str]:
    """`LoraSpec.target` -> the full names of the linear modules to adapt, in model order."""
    linears = linear_names(model)
    if isinstance(target, str):
        decoder = [n for n in linears if _in_decoder(n)]
        vision = [n for n in decoder if ".vision_" in n]
        if target == "vision" and not vision:
            raise EveError(f"train.lora.target 'vision': this model has no vision copy of a linear layer "
                           f"(decoupled: {model.config.decoupled}); target 'llm', 'all' or patterns instead")
        return {"vision": vision, "llm": [n for n in decoder if ".vision_" not in n], "all": decoder}[target]
    modules = dict(model.named_modules())
    chosen = set()
    for pattern in target:
        hits = [n for n in modules if n and (fnmatch.fnmatchcase(n, pattern) or fnmatch.fnmatchcase(n, f"*.{pattern}"))]
        linear_hits = [n for n in hits if isinstance(modules[n], nn.Linear)]
        if not linear_hits:
            found = f"it matches only {_summary(hits)}, which are not Linear; " if hits else "it matches no module; "
            raise EveError(f"train.lora.target: pattern {pattern!r}: {found}the model's linear modules are: "
                           f"{_summary(linears)}")
        chosen.update(linear_hits)
    if "lm_head" in chosen and model.config.tie_word_embeddings:
        raise EveError("train.lora.target: lm_head shares its weight with model.embed_tokens "
                       "(tie_word_embeddings), so merging an adapter into it would change the input embeddings")
    return [n for n in linears if n in chosen]


def check_groups(groups) -> None:
    extra = [g for g in groups if g not in LORA_GROUPS]
    if extra:
        raise EveError(f"train.groups has {extra} but with train.lora the decoder trains through its adapters "
                       f"(train.lora.target); train.groups may only hold {list(LORA_GROUPS)} (the PEL, trained "
                       "fully)")


def lora_config(model: nn.Module, spec: LoraSpec, groups) -> "peft.LoraConfig":
    check_groups(groups)
    save = [*spec.modules_to_save, *([PEL] if "pel" in groups else [])]
    return _peft().LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                                  target_modules=resolve_target(model, spec.target), modules_to_save=save or None)


def apply(model: nn.Module, spec: LoraSpec, groups) -> "peft.PeftModel":
    """The stage's model with adapters, trainable exactly where LoRA trains: the adapters, the PEL
    if `groups` holds `pel`, and `spec.modules_to_save`. Everything else is frozen. With
    `spec.qlora` the base is quantized to 4 bits and moved to the GPU first."""
    config = lora_config(model, spec, groups)
    return wrap(quantize_4bit(model) if spec.qlora else model, config)


def wrap(model: nn.Module, config) -> "peft.PeftModel":
    return _peft().get_peft_model(model, config)


def is_lora(model: nn.Module) -> bool:
    return getattr(model, "peft_config", None) is not None


def base(model: nn.Module) -> nn.Module:
    """The EveForConditionalGeneration inside a peft model (adapters in place); `model` itself otherwise."""
    return model.get_base_model() if is_lora(model) else model


def quantize_4bit(model: nn.Module) -> nn.Module:
    """The decoder's linear layers as bitsandbytes NF4 `Linear4bit` (bf16 compute), on the GPU.
    The LM head (tied to the embeddings) and the PEL stay in their dtype."""
    if not torch.cuda.is_available():
        raise EveError("train.lora.qlora needs a CUDA device (bitsandbytes 4-bit); none is available here. "
                       "Set train.lora.qlora=false to train LoRA on the full-precision base")
    try:
        import bitsandbytes as bnb
    except ImportError as e:
        raise EveError("train.lora.qlora needs bitsandbytes: pip install bitsandbytes") from e
    for name in linear_names(model):
        if not _in_decoder(name):
            continue
        old = model.get_submodule(name)
        new = bnb.nn.Linear4bit(old.in_features, old.out_features, bias=old.bias is not None,
                                compute_dtype=torch.bfloat16, quant_type="nf4")
        new.weight = bnb.nn.Params4bit(old.weight.data, requires_grad=False, quant_type="nf4")
        if old.bias is not None:
            new.bias = nn.Parameter(old.bias.data, requires_grad=False)
        model.set_submodule(name, new)
    return model.cuda()  # Params4bit quantizes on the move to the GPU


def merge(model: "peft.PeftModel"):
    """The adapters folded into the base weights (and the trained PEL copy put in place): a plain
    EveForConditionalGeneration, for `export.save_final`. Consumes `model`'s adapters."""
    merged = model.merge_and_unload(safe_merge=True)
    merged.tie_weights()
    return merged


def save_adapter(model: "peft.PeftModel", out_dir: str) -> str:
    """peft's format (adapter_config.json, adapter_model.safetensors): loads with
    `PeftModel.from_pretrained(base_model, out_dir)` on the stage's base model folder. Atomic."""
    tmp = out_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.rename(tmp, out_dir)
    return out_dir


def save_config(model, folder: str) -> None:
    """Record the adapter config of a peft model in a checkpoint folder (nothing for a plain model)."""
    if is_lora(model):
        model.peft_config[model.active_adapter].save_pretrained(folder)


def saved_config(folder: str):
    """The LoraConfig a LoRA checkpoint was written with; None for a full-weight checkpoint."""
    if not os.path.isfile(os.path.join(folder, CONFIG_FILE)):
        return None
    return _peft().LoraConfig.from_pretrained(folder)
