"""Evaluation: tasks as data, VQA / MCQ / ANLS metrics, resumable runs with per-question scores
(through the predictors of `eve_vlm.infer`), and run comparison. Entry point: `eve eval` (see
docs/evaluation.md)."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
