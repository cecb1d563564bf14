"""Evaluation: tasks as data, VQA / MCQ / ANLS metrics, direct or endpoint predictors, resumable
runs with per-question scores, and run comparison. Entry point: `eve eval` (see docs/evaluation.md)."""

from .compare import compare_runs
from .metrics import METRICS, anls, exact_match, extract_choice, multiple_choice, normalize_answer, vqa_accuracy
from .predictors import DirectPredictor, EndpointPredictor
from .runner import evaluate, summary_markdown
from .tasks import Task, builtin_tasks

__all__ = [
    "METRICS", "DirectPredictor", "EndpointPredictor", "Task", "anls", "builtin_tasks", "compare_runs", "evaluate",
    "exact_match", "extract_choice", "multiple_choice", "normalize_answer", "summary_markdown", "vqa_accuracy",
]
