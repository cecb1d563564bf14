"""An expert around any transformers vision pipeline whose weights you have locally: object
detection (DETR, OWL-ViT with labels, ...), image tagging (classification or zero-shot CLIP /
SigLIP with candidate labels), or an OCR / captioning model through image-text-to-text.

    --experts det=pipeline --expert-opt det.task=object-detection --expert-opt det.model=PATH
    --experts tags=pipeline --expert-opt tags.task=zero-shot-image-classification \
        --expert-opt tags.model=PATH --expert-opt "tags.labels=dog,cat,car,tree"
"""

import threading
from collections import Counter

from ..errors import EveError
from ..processing.chat import image_part, text_part
from .experts import Expert

TASKS = ("object-detection", "zero-shot-object-detection", "image-classification",
         "zero-shot-image-classification", "image-text-to-text")
_ZERO_SHOT = ("zero-shot-object-detection", "zero-shot-image-classification")


class PipelineExpert(Expert):
    name = "pipeline"
    cost = 0.5  # depends on the model; declare yours with cost=

    def __init__(self, task: str, model=None, pipe=None, labels=None, threshold: float = 0.3, top_k: int = 5,
                 prompt: str = "Read the text in the image.", max_new_tokens: int = 64, device=None,
                 batch_size: int = 1, cost: float | None = None):
        """`model`: a local folder (nothing is downloaded); `pipe`: an already built pipeline
        object instead. `labels`: candidate labels of the zero-shot tasks (list or "a,b,c").
        `batch_size` > 1 only for models whose processor gives every image the same size
        (DETR's does not: its batches of different-sized images fail)."""
        if task not in TASKS:
            raise EveError(f"pipeline expert: unknown task {task!r}; choose from {list(TASKS)}")
        labels = [s.strip() for s in labels.split(",") if s.strip()] if isinstance(labels, str) else labels
        if task in _ZERO_SHOT and not labels:
            raise EveError(f"pipeline expert: task {task} needs labels=a,b,c")
        if pipe is None:
            if model is None:
                raise EveError("pipeline expert: give model=PATH (a local folder with the weights)")
            from transformers import pipeline

            try:
                pipe = pipeline(task, model=str(model), device=device)
            except (OSError, ValueError) as exc:
                raise EveError(f"pipeline expert: cannot load {task} model from {model}: {exc}") from exc
        self.pipe, self.task, self.labels = pipe, task, labels
        self.threshold, self.top_k, self.batch_size = float(threshold), int(top_k), int(batch_size)
        self.prompt, self.max_new_tokens = prompt, int(max_new_tokens)
        self.version = f"{task}:{getattr(getattr(pipe, 'model', None), 'name_or_path', None) or model}"
        if cost is not None:
            self.cost = float(cost)
        self._lock = threading.Lock()  # one forward at a time; the engine may call from several threads

    def __call__(self, images: list) -> list[dict]:
        with self._lock:
            outputs = self._run(images)
        if len(images) == 1 and outputs and isinstance(outputs[0], dict):
            outputs = [outputs]  # some pipelines unwrap a one-image batch
        return [self._facts(out, image) for out, image in zip(outputs, images)]

    def _run(self, images: list):
        if self.task in _ZERO_SHOT:
            return self.pipe(images, candidate_labels=self.labels, batch_size=self.batch_size)
        if self.task == "image-text-to-text":
            messages = [[{"role": "user", "content": [image_part(image), text_part(self.prompt)]}] for image in images]
            return self.pipe(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False,
                             batch_size=self.batch_size)
        if self.task == "image-classification":
            return self.pipe(images, top_k=self.top_k, batch_size=self.batch_size)
        return self.pipe(images, threshold=self.threshold, batch_size=self.batch_size)

    def _facts(self, out: list, image) -> dict:
        if self.task == "image-text-to-text":
            out = [out] if isinstance(out, dict) else out  # one dict or a list of one per chat
            text = out[0]["generated_text"] if out else ""
            return {"text": text if isinstance(text, str) else str(text)}
        if self.task.endswith("object-detection"):
            w, h = image.size
            objects = [{"label": o["label"], "score": round(float(o["score"]), 3),
                        "box": [round(o["box"][k] / s, 3) for k, s in
                                (("xmin", w), ("ymin", h), ("xmax", w), ("ymax", h))]}
                       for o in out if o["score"] >= self.threshold]
            return {"objects": sorted(objects, key=lambda o: -o["score"])}
        labels = [{"label": o["label"], "score": round(float(o["score"]), 3)} for o in out
                  if o["score"] >= self.threshold]
        return {"labels": sorted(labels, key=lambda o: -o["score"])[:self.top_k]}

    def describe(self, facts: dict) -> list[str]:
        if "text" in facts:
            return [facts["text"].strip()] if facts["text"].strip() else []
        if "objects" in facts:
            counts = Counter(o["label"] for o in facts["objects"])
            if not counts:
                return []
            return ["Objects detected: " + ", ".join(f"{n} x {label}" if n > 1 else label
                                                      for label, n in counts.items()) + "."]
        labels = [o["label"] for o in facts.get("labels", [])]
        return [f"Tags: {', '.join(labels)}."] if labels else []
