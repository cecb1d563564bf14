"""Vision experts: an image in, structured facts out.

An expert is any object with
    name: str        the key of its facts in every caption record
    version: str     recorded with the facts, so a changed expert is visible in the output
    cost: float      declared seconds per image on one CPU core (the cost model in docs/captioning.md)
    __call__(images: list[PIL.Image]) -> list[dict]     one JSON-serializable dict per image
    describe(facts: dict) -> list[str]                  the facts as plain sentences

`describe` is what the fusers see: the rule fuser joins the sentences into the caption, the model
fusers put them in the prompt. Subclass `Expert` (its `describe` falls back to the JSON of the
facts) and load yours with `--experts my_pkg.module:MyExpert`, or `register_expert` it by name.
"""

import importlib
import json

from ..errors import EveError


class Expert:
    name = "expert"
    version = "1"
    cost = 0.0

    def __call__(self, images: list) -> list[dict]:
        raise NotImplementedError

    def describe(self, facts: dict) -> list[str]:
        return [f"{self.name}: {json.dumps(facts, ensure_ascii=False)}"] if facts else []


EXPERTS = {
    "ocr": "eve_vlm.caption.ocr:TesseractOCR",
    "layout": "eve_vlm.caption.layout:LayoutExpert",
    "pipeline": "eve_vlm.caption.pipeline:PipelineExpert",
}


def register_expert(name: str, target) -> None:
    """Make `name` loadable by `load_expert`: `target` is a class / factory or "module:Attr"."""
    EXPERTS[name] = target


def _resolve(target):
    if not isinstance(target, str):
        return target
    module, _, attr = target.partition(":")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise EveError(f"cannot load expert {target!r}: {type(exc).__name__}: {exc}") from exc


def load_expert(spec: str, **kwargs) -> Expert:
    """An expert from a spec: a registered name ("ocr"), "module:Class", or "alias=spec" to give
    the instance another name (two pipeline experts: "det=pipeline", "tags=pipeline")."""
    alias, _, target = spec.rpartition("=")
    if target not in EXPERTS and ":" not in target:
        raise EveError(f"unknown expert {target!r}: choose from {sorted(EXPERTS)} or give module:Class")
    try:
        expert = _resolve(EXPERTS.get(target, target))(**kwargs)
    except TypeError as exc:
        raise EveError(f"expert {spec!r}: bad options {sorted(kwargs)}: {exc}") from exc
    if not callable(expert) or not hasattr(expert, "describe"):
        raise EveError(f"expert {spec!r} is not an Expert: it needs __call__(images) and describe(facts)")
    if alias:
        expert.name = alias
    return expert


def run_experts(experts: list, images: list) -> tuple[list[dict], list[dict]]:
    """(facts, errors) per image: `facts[i][name]` for every expert that succeeded on image i,
    `errors[i][name]` the message of every one that failed. A failing batch is retried image by
    image, so one bad image costs only its own facts."""
    facts, errors = [{} for _ in images], [{} for _ in images]
    for expert in experts:
        try:
            outputs = _checked(expert, images)
        except Exception:  # noqa: BLE001 -- find the image(s) at fault
            outputs = []
            for i, image in enumerate(images):
                try:
                    outputs += _checked(expert, [image])
                except Exception as exc:  # noqa: BLE001 -- reported in this image's record
                    outputs.append(None)
                    errors[i][expert.name] = f"{type(exc).__name__}: {exc}"
        for i, out in enumerate(outputs):
            if out is not None:
                facts[i][expert.name] = out
    return facts, errors


def _checked(expert, images: list) -> list[dict]:
    outputs = expert(images)
    if not isinstance(outputs, list) or len(outputs) != len(images):
        raise EveError(f"expert {expert.name} returned {type(outputs).__name__} for {len(images)} images; "
                       "expected a list with one dict per image")
    for out in outputs:
        if not isinstance(out, dict):
            raise EveError(f"expert {expert.name} returned a {type(out).__name__}, not a dict")
        json.dumps(out)  # not serializable: the expert is at fault, not the writer
    return outputs
