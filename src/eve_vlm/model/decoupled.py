"""Modality routing: every token goes through the copy of its own modality.

The official code runs both copies on every token and blends them with a mask (~1.7x the linear
FLOPs). Here the visual rows are gathered once, run through the vision copy only, and scattered
back. The indices are built once per forward (`Routing.from_mask`) and shared by every layer; a
forward with no visual token (text prompts, every decode step) gets `Routing.TEXT_ONLY`, which
never gathers or copies.
"""

from dataclasses import dataclass

import torch
from torch import nn

# A hidden-state tensor split by modality: [(rows, is_vision), ...]
Parts = list[tuple[torch.Tensor, bool]]


@dataclass(frozen=True)
class Routing:
    text_idx: torch.Tensor | None = None  # flat (batch*seq) row indices of text tokens
    vision_idx: torch.Tensor | None = None  # ... and of visual tokens

    TEXT_ONLY = None  # set below: the routing of a forward without visual tokens

    @classmethod
    def from_mask(cls, visual: torch.Tensor) -> "Routing":
        """`visual`: bool [batch, seq], True at visual-token positions."""
        if not bool(visual.any()):
            return cls.TEXT_ONLY
        flat = visual.reshape(-1)
        return cls(text_idx=(~flat).nonzero().squeeze(1), vision_idx=flat.nonzero().squeeze(1))

    @property
    def has_vision(self) -> bool:
        return self.vision_idx is not None

    def split(self, x: torch.Tensor) -> "Parts":
        """[B, L, D] -> [(rows, is_vision), ...]; a single untouched part when there is no vision."""
        if not self.has_vision:
            return [(x, False)]
        flat = x.reshape(-1, x.shape[-1])
        return [(flat.index_select(0, self.text_idx), False), (flat.index_select(0, self.vision_idx), True)]

    def merge(self, parts: "Parts", like: torch.Tensor) -> torch.Tensor:
        """Inverse of `split` for per-part outputs (any last dim); `like` gives [B, L]."""
        if not self.has_vision:
            return parts[0][0]
        (text, _), (vision, _) = parts
        out = text.new_empty(like.shape[0] * like.shape[1], text.shape[-1])
        out.index_copy_(0, self.text_idx, text)
        out.index_copy_(0, self.vision_idx, vision)
        return out.view(like.shape[0], like.shape[1], -1)


Routing.TEXT_ONLY = Routing()


def pick(text: nn.Module, vision: nn.Module | None, is_vision: bool) -> nn.Module:
    """The module a part goes through: the vision copy for visual rows when it exists."""
    return vision if (is_vision and vision is not None) else text


def apply(parts: "Parts", text: nn.Module, vision: nn.Module | None) -> "Parts":
    """Run each part through the module of its modality; the flags travel with the outputs."""
    return [(pick(text, vision, v)(x), v) for x, v in parts]


def zero_link(params) -> torch.Tensor | float:
    """A zero that depends on every given parameter: added to an output, it changes nothing but
    gives each parameter a (zero) gradient instead of none."""
    return sum(p.reshape(-1)[0] for p in params) * 0.0
