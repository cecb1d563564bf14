"""Modality routing: every token goes through the copy of its own modality.

The official code runs both copies on every token and blends them with a mask (~1.7x the linear
FLOPs). Here the hidden states are permuted once per forward into modality-sorted order (all text
rows of the flattened batch, then all visual rows) and stay so through the whole layer stack, so
each copy runs on a contiguous slice (`split`, a view) with no gather per module. Only the joint
causal attention needs sequence order: q/k/v are permuted into it and the attention output back,
one gather each per layer. The hidden states return to sequence order once, after the last layer.
The permutation is built once per forward (`Routing.from_mask`) and shared by every layer; a
forward with no visual token (text prompts, every decode step) gets `Routing.TEXT_ONLY`, which
keeps [B, L, D] in sequence order and never permutes.
"""

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Routing:
    order: torch.Tensor | None = None  # sorted row -> flat (batch*seq) position: text rows, then visual
    inverse: torch.Tensor | None = None  # flat position -> sorted row
    n_text: int = 0
    shape: tuple[int, int] = (0, 0)  # [batch, seq]

    TEXT_ONLY = None  # set below: the routing of a forward without visual tokens

    @classmethod
    def from_mask(cls, visual: torch.Tensor) -> "Routing":
        """`visual`: bool [batch, seq], True at visual-token positions."""
        if not bool(visual.any()):
            return cls.TEXT_ONLY
        flat = visual.reshape(-1)
        order = flat.argsort(stable=True)  # stable: sequence order within a modality, so gathers copy long runs
        return cls(order, order.argsort(), int((~flat).sum()), tuple(visual.shape))

    @property
    def has_vision(self) -> bool:
        return self.order is not None

    def sort(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] in sequence order -> [B*L, C] modality-sorted."""
        if not self.has_vision:
            return x
        return _Permute.apply(x.reshape(-1, x.shape[-1]), self.order, self.inverse)

    def unsort(self, x: torch.Tensor) -> torch.Tensor:
        """Inverse of `sort`."""
        if not self.has_vision:
            return x
        return _Permute.apply(x, self.inverse, self.order).view(*self.shape, -1)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Sorted rows -> [text rows, visual rows] (views); [x] when there is no vision."""
        if not self.has_vision:
            return [x]
        return list(x.split([self.n_text, x.shape[0] - self.n_text]))

    def join(self, parts: list[torch.Tensor]) -> torch.Tensor:
        """Inverse of `split` for per-part outputs (any last dim)."""
        return torch.cat(parts) if len(parts) > 1 else parts[0]


Routing.TEXT_ONLY = Routing()


class _Permute(torch.autograd.Function):
    """Row gather by a permutation. Autograd's own index_select backward scatter-adds into zeros;
    the gradient of a permutation is the gather by its inverse, which is cheaper."""

    @staticmethod
    def forward(ctx, x, index, inverse):
        ctx.save_for_backward(inverse)
        return x.index_select(0, index)

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


def apply(parts: list[torch.Tensor], text: nn.Module, vision: nn.Module | None) -> list[torch.Tensor]:
    """Run the text part through `text` and the visual part through the vision copy, if any."""
    return [(vision if i and vision is not None else text)(x) for i, x in enumerate(parts)]


def zero_link(params) -> torch.Tensor | float:
    """A zero that depends on every given parameter: added to an output, it changes nothing but
    gives each parameter a (zero) gradient instead of none."""
    return sum(p.reshape(-1)[0] for p in params) * 0.0
