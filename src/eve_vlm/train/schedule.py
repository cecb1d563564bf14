"""Learning-rate schedules: linear warm-up, then cosine decay to 0 (HF's `cosine`, as the official
scripts train) or a constant rate. transformers builds them; recipes name them."""

import math
from typing import Literal, get_args

import torch
from transformers import get_scheduler

Schedule = Literal["cosine", "constant"]
SCHEDULES: tuple[str, ...] = get_args(Schedule)
# recipe name -> transformers' SchedulerType: its own "constant" has no warm-up
_HF_NAMES = {"cosine": "cosine", "constant": "constant_with_warmup"}


def build_scheduler(optimizer: torch.optim.Optimizer, schedule: Schedule, warmup_ratio: float,
                    total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-step scheduler over `total` optimizer steps, `warmup_ratio` of them (rounded up) warming up."""
    return get_scheduler(_HF_NAMES[schedule], optimizer, num_warmup_steps=math.ceil(warmup_ratio * total),
                         num_training_steps=total)
