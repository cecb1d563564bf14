import importlib.util
import math
from pathlib import Path
from types import SimpleNamespace

import torch

spec = importlib.util.spec_from_file_location(
    "loss_by_turn", Path(__file__).parent.parent / "benchmarks" / "loss_by_turn.py")
loss_by_turn = importlib.util.module_from_spec(spec)
spec.loader.exec_module(loss_by_turn)


class Oracle(torch.nn.Module):
    """Predicts token 7 everywhere: answers that are 7 cost ~0, others a lot."""

    def forward(self, input_ids, **_):
        logits = torch.full((*input_ids.shape, 10), -20.0)
        logits[..., 7] = 20.0
        return SimpleNamespace(logits=logits)


def test_answer_tokens_are_grouped_by_the_turn_they_answer():
    x = -100
    # two conversations: turns start where supervision switches on (labels are shifted by one)
    labels = torch.tensor([[x, x, 7, 7, x, x, 3, x, 7],
                           [x, 3, x, x, x, 7, 7, x, x]])
    batch = {"input_ids": torch.zeros_like(labels), "labels": labels, "pixel_values": []}
    by_turn = loss_by_turn.loss_by_turn(Oracle(), [batch])
    assert sorted(by_turn) == [1, 2, 3]
    assert len(by_turn[1]) == 3 and len(by_turn[2]) == 3 and len(by_turn[3]) == 1
    assert max(by_turn[3]) < 1e-6  # conversation 0's third turn: token 7
    assert sorted(round(v) for v in by_turn[1]) == [0, 0, 40]  # the 3 of conversation 1
    assert math.isclose(sum(by_turn[2]), 40, rel_tol=1e-3)  # conversation 0's second turn is a 3
