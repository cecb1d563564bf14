"""Recipes: one YAML file describes a training stage; `a.b=c` overrides change it from the command line.

A recipe is a typed model (`Recipe`, one section class per YAML section). Every key has a type and a
default (or is required) and every choice comes from the module that owns it, so an unknown key, a
wrong type or a value out of its choices is an error that names the key, the value and what is
allowed: a typo never silently trains with a default.
"""

import typing
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, Strict, StrictBool, StrictInt, ValidationError,
                      model_validator)

from ..data.mixture import Source
from ..dtypes import TorchDType
from ..errors import EveError
from ..model.config import Decoupled
from ..model.groups import Group
from ..processing.chat import Template, Turns
from ..processing.image import ResizeMode
from .lora import LoraSpec, check_groups
from .schedule import Schedule


class RecipeError(EveError):
    """A recipe (or an override) that cannot be trained from; the message names the key."""


def _yaml_float(value):
    """PyYAML (YAML 1.1) reads 2e-4 without a dot as a string."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    return value


Float = Annotated[float, Strict(), BeforeValidator(_yaml_float)]  # ints too, never bools
Positive = Annotated[StrictInt, Field(ge=1)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(Section):
    source: str  # an eve folder, an LLM folder / hub id / .gguf file, or "smollm2"
    tokenizer: str | None = None  # replaces the source's tokenizer ("qwen2.5", "smollm2", a folder)
    decoupled: list[Decoupled] | None = None  # the vision copies the model must have (None: as the source)
    init_vision: StrictBool = False  # copy the LLM weights into the vision copies before training
    config: dict[str, Any] = {}  # EveConfig fields when upcycling an LLM, e.g. pel_hidden_size

    @model_validator(mode="after")
    def _copies_to_init(self):
        if self.init_vision and self.decoupled == []:
            raise ValueError("model.init_vision needs vision copies: model.decoupled must not be []")
        return self


class DataSection(Section):
    sources: Annotated[list[Source], Field(min_length=1)]  # data/mixture.py: ratio | repeat, per-source template
    num_samples: StrictInt | None = None  # samples per epoch of a `ratio` mixture
    template: Template = "plain"
    max_size: StrictInt = 800  # image area budget: max_size² pixels
    resize_mode: ResizeMode = "train"
    max_length: StrictInt = 2048  # tokens, visual ones included; longer samples are skipped
    packing: StrictBool = False
    # joint: a record's turns are one conversation; independent: each question-answer pair is
    # its own row with the record's images (single-question prompts, none reads another's
    # answer), and the rows share the computation of their common prefix (the images)
    turns: Turns = "joint"
    group_by_length: StrictBool = False
    num_workers: StrictInt = 0
    max_bad_fraction: Float = 0.05
    min_seen: StrictInt = 1000  # samples seen before max_bad_fraction is enforced

    @model_validator(mode="after")
    def _packing_keeps_samples_whole(self):
        if self.packing and self.turns == "independent":
            raise ValueError("data.packing and data.turns=independent do not combine: a packed row holds "
                             "whole samples; set one of them")
        return self


class TrainSection(Section):
    groups: list[Group]  # trainable parameter groups (model/groups.py); with `lora`: [] or [pel]
    # LoRA through peft (train/lora.py): r, alpha, dropout, target (vision | llm | all | module
    # name patterns), modules_to_save, qlora. None: the groups train fully
    lora: LoraSpec | None = None
    lr: Float
    pel_lr: Float | None = None  # None: same as lr (the official vision_tower_lr)
    betas: tuple[Float, Float] = (0.9, 0.999)
    eps: Float = 1e-8
    weight_decay: Float = 0.0
    schedule: Schedule = "cosine"
    warmup_ratio: Float = 0.03
    steps: StrictInt | None = None  # optimizer steps; None: `epochs` passes over the data
    epochs: Float = 1.0
    global_batch: Positive  # samples per optimizer step = micro_batch x grad_accum x world
    micro_batch: Positive = 1  # samples per forward pass per process
    max_grad_norm: Float | None = 1.0
    # bf16 autocast: true, false, or auto (bf16 where the machine multiplies it natively and
    # measurably faster, fp32 elsewhere: train/precision.py); the saved recipe holds the choice
    bf16: StrictBool | Literal["auto"] = "auto"
    peak_gflops: Float | None = None  # the machine's matmul peak in the training dtype: logs mfu
    activation_checkpointing: StrictBool = False
    seed: StrictInt = 0
    resume: str | None = None  # "auto" (latest checkpoint of output.dir, if any) or a step-N folder
    progress: StrictBool = True

    @model_validator(mode="after")
    def _something_trains(self):
        if self.lora is not None:
            check_groups(self.groups)
        elif not self.groups:
            raise ValueError("train.groups: at least 1 required, got [] (or train.lora, where it may be [])")
        return self

    @model_validator(mode="after")
    def _whole_micro_batches(self):
        if self.global_batch % self.micro_batch:
            raise ValueError(f"train.global_batch ({self.global_batch}) must be a multiple of "
                             f"train.micro_batch ({self.micro_batch})")
        return self


class EvalSection(Section):
    # Held-out records, as data.sources (data's template, max_size and max_length apply); the
    # mean next-token loss over them is logged as eval_loss. None: no validation.
    sources: list[Source] | None = None
    every: Positive | None = None  # optimizer steps between passes; None: before step 1 and at the end only
    max_samples: Positive | None = 512  # the first N records: the same subset every pass


class CheckpointSection(Section):
    every: StrictInt | None = 1000  # optimizer steps between checkpoints; None: only on a signal
    keep: StrictInt = 2


class OutputSection(Section):
    dir: str
    dtype: TorchDType = "float32"  # of the final model folder
    tensorboard: StrictBool = True


class Recipe(Section):
    model: ModelSection
    data: DataSection
    train: TrainSection
    eval: EvalSection = EvalSection()
    checkpoint: CheckpointSection = CheckpointSection()
    output: OutputSection

    @model_validator(mode="before")
    @classmethod
    def _absent_sections_are_empty(cls, raw):
        """So that a missing section reports its required keys (`output.dir is required`)."""
        if isinstance(raw, dict):
            return {**{name: {} for name in cls.model_fields}, **{k: v for k, v in raw.items() if v is not None}}
        return raw

    def with_train(self, **changes) -> "Recipe":
        """A copy with `train` keys changed (not validated: for values the trainer decided)."""
        return self.model_copy(update={"train": self.train.model_copy(update=changes)})


def validate(raw: dict) -> Recipe:
    """The typed recipe of a YAML mapping, defaults filled in; every problem named in one error."""
    if not isinstance(raw, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(raw).__name__}")
    try:
        return Recipe.model_validate(raw)
    except ValidationError as e:
        raise RecipeError("\n".join(_problems(e))) from None


# pydantic error type -> what the key expects
_EXPECTED = {"int_type": "int", "int_parsing": "int", "int_from_float": "int", "float_type": "float",
             "float_parsing": "float", "bool_type": "bool", "bool_parsing": "bool", "string_type": "str",
             "list_type": "list", "tuple_type": "list", "dict_type": "a mapping", "model_type": "a mapping",
             "model_attributes_type": "a mapping", "dataclass_type": "a mapping", "dataclass_args_type": "a mapping"}


def _problems(error: ValidationError) -> list[str]:
    """One line per bad key; a union's alternatives (`train.bf16`: bool or 'auto') merge into one."""
    lines, expected = {}, {}
    for e in error.errors():
        key, keys = _locate(e["loc"])
        kind, value = e["type"], e.get("input")
        if kind in ("extra_forbidden", "unexpected_keyword_argument"):
            parent = key.rpartition(".")[0] or "a recipe"
            lines[key] = f"unknown key {key}; {parent} takes {sorted(keys)}"
        elif kind in ("missing", "missing_argument"):
            lines[key] = f"{key} is required"
        elif kind == "value_error":
            lines[key] = str(e["ctx"]["error"])
        elif kind in _EXPECTED or kind == "literal_error":
            expected.setdefault(key, []).append(e["ctx"]["expected"] if kind == "literal_error" else _EXPECTED[kind])
            lines[key] = f"{key}: expected {' or '.join(expected[key])}, got {type(value).__name__} {value!r}"
        elif kind == "too_short":
            lines[key] = f"{key}: at least {e['ctx']['min_length']} required, got {value!r}"
        else:  # a bound: too short, below a minimum
            lines[key] = f"{key}: {e['msg'][0].lower()}{e['msg'][1:]}, got {value!r}"
    return list(lines.values())


def _locate(loc: tuple) -> tuple[str, dict]:
    """The dotted recipe key of a pydantic error location (union member tags dropped) and the keys
    of the mapping that holds it."""
    tp, names, keys = Recipe, [], {}
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int) and typing.get_origin(tp) in (list, tuple):
            tp = typing.get_args(tp)[0]
        elif isinstance(part, str) and (fields := _fields(tp)) is not None:
            keys, tp = fields, fields.get(part)
        else:
            break
        names.append(str(part))
    return ".".join(names), keys


def _unwrap(tp):
    """X for Annotated[X, ...] and X | None."""
    while True:
        if typing.get_origin(tp) is Annotated:
            tp = typing.get_args(tp)[0]
            continue
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if typing.get_origin(tp) in (typing.Union, type(int | None)) and len(args) == 1:
            tp = args[0]
            continue
        return tp


def _fields(tp) -> dict | None:
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if isinstance(tp, type) and hasattr(tp, "__dataclass_fields__"):
        return typing.get_type_hints(tp)
    return None


def apply_override(recipe: dict, override: str) -> None:
    """`a.b=c` sets recipe[a][b] to yaml.safe_load(c) (so `3e-4`, `true`, `[pel, vision]` and
    `null` get their types); list items are addressed by index: `data.sources.0.path=x.jsonl`."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {override!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise RecipeError(f"override {override}: the value is not YAML ({e.problem})") from None
    *parents, last = key.split(".")
    node = recipe
    for i, part in enumerate(parents):
        where = ".".join(parents[:i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, (dict, list)):
            raise RecipeError(f"override {key}: {where} is not a mapping or a list")
    if isinstance(node, list):
        node[_index(last, node, key)] = value
    else:
        node[last] = value


def _index(part: str, node: list, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise RecipeError(f"override {where}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def load_recipe(path: str, overrides=()) -> Recipe:
    """Read, override and validate a recipe file."""
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    for override in overrides:
        apply_override(recipe, override)
    try:
        return validate(recipe)
    except RecipeError as e:
        raise RecipeError(f"{path}:\n{e}") from None


def save_recipe(recipe: Recipe, path: str) -> None:
    """As plain YAML: `load_recipe` reads it back to an equal recipe."""
    with open(path, "w") as f:
        yaml.safe_dump(recipe.model_dump(mode="json"), f, sort_keys=False)
