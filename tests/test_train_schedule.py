"""The learning-rate schedule (transformers' warm-up + cosine / constant): its values against the
closed form, and a scheduler restored from a checkpoint continues with the same values."""

import math

import pytest
import torch

from eve_vlm.train.schedule import build_scheduler

TOTAL, WARMUP_RATIO, LR = 100, 0.1, 2e-4  # 10 warm-up steps


def closed_form(schedule: str, step: int, warmup: int = 10, total: int = TOTAL) -> float:
    """The official scripts' rule (HF `cosine`): linear warm-up from 0, then half a cosine to 0."""
    if step < warmup:
        return LR * step / warmup
    if schedule == "constant":
        return LR
    return LR * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(2))], "lr": LR},
                              {"params": [torch.nn.Parameter(torch.zeros(2))], "lr": 10 * LR}])


def lrs(scheduler, steps: int) -> list[float]:
    """The rate of the first group before each of the next `steps` steps."""
    out = []
    for _ in range(steps):
        out.append(scheduler.optimizer.param_groups[0]["lr"])
        scheduler.optimizer.step()
        scheduler.step()
    return out


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_values_follow_the_closed_form(schedule):
    values = lrs(build_scheduler(optimizer(), schedule, WARMUP_RATIO, TOTAL), TOTAL + 1)
    for step in (0, 1, 5, 9, 10, 11, 55, 77, 99, 100):  # warm-up start, its end, middle, end
        assert values[step] == pytest.approx(closed_form(schedule, step), rel=1e-12, abs=1e-20), step
    assert values[0] == 0 and values[10] == LR
    if schedule == "cosine":
        assert values[55] == pytest.approx(LR / 2) and values[100] == 0
    else:
        assert values[100] == LR


def test_every_group_is_scaled_alike_and_warm_up_rounds_up():
    opt = optimizer()
    scheduler = build_scheduler(opt, "cosine", 0.03, 10)  # ceil(0.3): one warm-up step
    assert [g["lr"] for g in opt.param_groups] == [0, 0]
    lrs(scheduler, 1)
    assert [g["lr"] for g in opt.param_groups] == [LR, 10 * LR]
    lrs(scheduler, 4)
    assert opt.param_groups[1]["lr"] == pytest.approx(10 * closed_form("cosine", 5, warmup=1, total=10))


def test_no_warm_up_starts_at_the_full_rate():
    assert lrs(build_scheduler(optimizer(), "cosine", 0.0, TOTAL), 1) == [LR]


@pytest.mark.parametrize("schedule", ["cosine", "constant"])
def test_a_restored_scheduler_continues_with_the_same_values(schedule):
    reference = lrs(build_scheduler(optimizer(), schedule, WARMUP_RATIO, TOTAL), TOTAL)
    first = build_scheduler(optimizer(), schedule, WARMUP_RATIO, TOTAL)
    lrs(first, 37)
    saved = {"optimizer": first.optimizer.state_dict(), "scheduler": first.state_dict()}
    opt = optimizer()  # as checkpoint.load + _resume do: optimizer state, then the scheduler's
    resumed = build_scheduler(opt, schedule, WARMUP_RATIO, TOTAL)
    opt.load_state_dict(saved["optimizer"])
    resumed.load_state_dict(saved["scheduler"])
    assert lrs(resumed, TOTAL - 37) == reference[37:]
