"""Recipes: one YAML file describes a training stage; `a.b=c` overrides change it from the command line.

Every key has a type and a default (or is required); an unknown key, a wrong type or a value out of
its choices is an error that names the key, so a typo never silently trains with a default.
"""

import copy

import yaml

from ..errors import EveError
from ..model.config import DECOUPLABLE
from ..model.groups import GROUPS
from ..processing.chat import TURNS

REQUIRED = object()
OPTIONAL_STR, OPTIONAL_INT, OPTIONAL_FLOAT, OPTIONAL_LIST = (str, None), (int, None), (float, None), (list, None)

# section -> key -> (type(s), default). None among the types allows null.
SCHEMA = {
    "model": {
        "source": (str, REQUIRED),  # an eve folder, an LLM folder / hub id / .gguf file, or "smollm2"
        "tokenizer": (OPTIONAL_STR, None),  # replaces the source's tokenizer ("qwen2.5", "smollm2", a folder)
        "decoupled": (OPTIONAL_LIST, None),  # the vision copies the model must have (None: as the source)
        "init_vision": (bool, False),  # copy the LLM weights into the vision copies before training
        "config": (dict, {}),  # EveConfig fields when upcycling an LLM, e.g. pel_hidden_size
    },
    "data": {
        "sources": (list, REQUIRED),  # [{path, image_root, ratio | repeat, template}] (data/mixture.py)
        "num_samples": (OPTIONAL_INT, None),  # samples per epoch of a `ratio` mixture
        "template": (str, "plain"),
        "max_size": (int, 800),  # image area budget: max_size² pixels
        "resize_mode": (str, "train"),
        "max_length": (int, 2048),  # tokens, visual ones included; longer samples are skipped
        "packing": (bool, False),
        # joint: a record's turns are one conversation; independent: each question-answer pair is
        # its own row with the record's images (single-question prompts, none reads another's
        # answer), and the rows share the computation of their common prefix (the images)
        "turns": (str, "joint"),
        "group_by_length": (bool, False),
        "num_workers": (int, 0),
        "max_bad_fraction": (float, 0.05),
        "min_seen": (int, 1000),  # samples seen before max_bad_fraction is enforced
    },
    "train": {
        "groups": (list, REQUIRED),  # trainable parameter groups: subset of pel, vision, llm
        "lr": (float, REQUIRED),
        "pel_lr": (OPTIONAL_FLOAT, None),  # None: same as lr (the official vision_tower_lr)
        "betas": (list, [0.9, 0.999]),
        "eps": (float, 1e-8),
        "weight_decay": (float, 0.0),
        "schedule": (str, "cosine"),
        "warmup_ratio": (float, 0.03),
        "steps": (OPTIONAL_INT, None),  # optimizer steps; None: `epochs` passes over the data
        "epochs": (float, 1.0),
        "global_batch": (int, REQUIRED),  # samples per optimizer step = micro_batch x grad_accum x world
        "micro_batch": (int, 1),  # samples per forward pass per process
        "max_grad_norm": (OPTIONAL_FLOAT, 1.0),
        # bf16 autocast: true, false, or auto (bf16 where the machine multiplies it natively and
        # measurably faster, fp32 elsewhere: train/precision.py); the saved recipe holds the choice
        "bf16": ((bool, str), "auto"),
        "peak_gflops": (OPTIONAL_FLOAT, None),  # the machine's matmul peak in the training dtype: logs mfu
        "activation_checkpointing": (bool, False),
        "seed": (int, 0),
        "resume": (OPTIONAL_STR, None),  # "auto" (latest checkpoint of output.dir, if any) or a step-N folder
        "progress": (bool, True),
    },
    "eval": {
        # Held-out records, as data.sources (data's template, max_size and max_length apply); the
        # mean next-token loss over them is logged as eval_loss. None: no validation.
        "sources": (OPTIONAL_LIST, None),
        "every": (OPTIONAL_INT, None),  # optimizer steps between passes; None: before step 1 and at the end only
        "max_samples": (OPTIONAL_INT, 512),  # the first N records: the same subset every pass
    },
    "checkpoint": {
        "every": (OPTIONAL_INT, 1000),  # optimizer steps between checkpoints; None: only on a signal
        "keep": (int, 2),
    },
    "output": {
        "dir": (str, REQUIRED),
        "dtype": (str, "float32"),  # of the final model folder
        "tensorboard": (bool, True),
    },
}

CHOICES = {
    "data.template": ("plain", "eve", "native"),
    "data.resize_mode": ("train", "inference"),
    "data.turns": TURNS,
    "train.schedule": ("cosine", "constant"),
    "train.bf16": (True, False, "auto"),
    "output.dtype": ("float32", "bfloat16", "float16"),
}
SOURCE_KEYS = ("path", "image_root", "ratio", "repeat", "template", "name")


class RecipeError(EveError):
    """A recipe (or an override) that cannot be trained from; the message names the key."""


def _check_type(key: str, value, types):
    types = types if isinstance(types, tuple) else (types,)
    if value is None and None in types:
        return value
    if float in types and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if float in types and isinstance(value, str) and _looks_numeric(value):
        return float(value)  # PyYAML (YAML 1.1) reads 2e-4 without a dot as a string
    if any(t is not None and isinstance(value, t) and not (t is int and isinstance(value, bool)) for t in types):
        return value
    names = " or ".join("null" if t is None else t.__name__ for t in types)
    raise RecipeError(f"{key}: expected {names}, got {type(value).__name__} {value!r}")


def validate(recipe: dict) -> dict:
    """A copy of `recipe` with defaults filled in, checked key by key."""
    if not isinstance(recipe, dict):
        raise RecipeError(f"a recipe is a mapping of sections, got {type(recipe).__name__}")
    unknown = set(recipe) - set(SCHEMA)
    if unknown:
        raise RecipeError(f"unknown section(s) {sorted(unknown)}; sections are {list(SCHEMA)}")
    out = {}
    for section, keys in SCHEMA.items():
        given = recipe.get(section) or {}
        if not isinstance(given, dict):
            raise RecipeError(f"{section}: expected a mapping, got {given!r}")
        for key in given:
            if key not in keys:
                raise RecipeError(f"unknown key {section}.{key}; {section} takes {sorted(keys)}")
        out[section] = {}
        for key, (types, default) in keys.items():
            name = f"{section}.{key}"
            if key not in given:
                if default is REQUIRED:
                    raise RecipeError(f"{name} is required")
                out[section][key] = copy.deepcopy(default)
                continue
            value = _check_type(name, given[key], types)
            if name in CHOICES and value not in CHOICES[name]:
                raise RecipeError(f"{name}: {value!r} is not one of {CHOICES[name]}")
            out[section][key] = value
    _check_values(out)
    return out


def _check_values(r: dict) -> None:
    for name, allowed, values in (("train.groups", GROUPS, r["train"]["groups"]),
                                  ("model.decoupled", DECOUPLABLE, r["model"]["decoupled"] or [])):
        bad = [v for v in values if v not in allowed]
        if bad:
            raise RecipeError(f"{name}: unknown {bad}; choose from {list(allowed)}")
    if not r["train"]["groups"]:
        raise RecipeError("train.groups: at least one group must train")
    if r["model"]["init_vision"] and r["model"]["decoupled"] == []:
        raise RecipeError("model.init_vision needs vision copies: model.decoupled must not be []")
    if len(r["train"]["betas"]) != 2:
        raise RecipeError(f"train.betas: expected two numbers, got {r['train']['betas']}")
    for key in ("global_batch", "micro_batch"):
        if r["train"][key] < 1:
            raise RecipeError(f"train.{key} must be >= 1")
    if r["train"]["global_batch"] % r["train"]["micro_batch"]:
        raise RecipeError(f"train.global_batch ({r['train']['global_batch']}) must be a multiple of "
                          f"train.micro_batch ({r['train']['micro_batch']})")
    if not r["data"]["sources"]:
        raise RecipeError("data.sources: at least one source is required")
    if r["data"]["packing"] and r["data"]["turns"] == "independent":
        raise RecipeError("data.packing and data.turns=independent do not combine: a packed row holds "
                          "whole samples; set one of them")
    _check_sources("data.sources", r["data"]["sources"])
    if r["eval"]["sources"] is not None:
        _check_sources("eval.sources", r["eval"]["sources"])
    for key in ("every", "max_samples"):
        if r["eval"][key] is not None and r["eval"][key] < 1:
            raise RecipeError(f"eval.{key} must be >= 1 or null")


def _check_sources(name: str, sources: list) -> None:
    for i, s in enumerate(sources):
        if not isinstance(s, dict) or "path" not in s:
            raise RecipeError(f"{name}.{i}: expected a mapping with a `path`, got {s!r}")
        for key in s:
            if key not in SOURCE_KEYS:
                raise RecipeError(f"unknown key {name}.{i}.{key}; a source takes {list(SOURCE_KEYS)}")
        if s.get("template") is not None and s["template"] not in CHOICES["data.template"]:
            raise RecipeError(f"{name}.{i}.template: {s['template']!r} is not one of {CHOICES['data.template']}")


def apply_override(recipe: dict, override: str) -> None:
    """`a.b=c` sets recipe[a][b] to yaml.safe_load(c) (so `3e-4`, `true`, `[pel, vision]` and
    `null` get their types); list items are addressed by index: `data.sources.0.path=x.jsonl`."""
    key, sep, raw = override.partition("=")
    if not sep or not key:
        raise RecipeError(f"override {override!r}: expected KEY=VALUE, e.g. train.lr=1e-4")
    value = yaml.safe_load(raw)
    *parents, last = key.split(".")
    node = recipe
    for i, part in enumerate(parents):
        where = ".".join(parents[:i + 1])
        if isinstance(node, list):
            node = node[_index(part, node, where)]
        else:
            if i == 0 and part not in SCHEMA:
                raise RecipeError(f"override {key}: unknown section {part!r}; sections are {list(SCHEMA)}")
            node = node.setdefault(part, {})
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


def _looks_numeric(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def load_recipe(path: str, overrides=()) -> dict:
    """Read, override and validate a recipe file."""
    with open(path) as f:
        recipe = yaml.safe_load(f) or {}
    for override in overrides:
        apply_override(recipe, override)
    return validate(recipe)


def save_recipe(recipe: dict, path: str) -> None:
    with open(path, "w") as f:
        yaml.safe_dump(recipe, f, sort_keys=False)
