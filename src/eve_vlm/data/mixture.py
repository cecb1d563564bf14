"""A mixture of LLaVA-format sources with sampling ratios, as one map-style dataset.

A recipe's `data` section builds one (see train/data.py); its sources read, for example:

    sources:
      - {path: captions.jsonl, image_root: images, ratio: 0.7, template: plain}
      - {path: vqa.jsonl, image_root: images, ratio: 0.3, template: eve}

Either every source has a `ratio` (its share of `num_samples`), or none does and each may have a
`repeat` (how many times the source is used per epoch; 0.5 takes a random half, 2 takes every
record twice; default 1). Index k of an epoch maps to a fixed (source, record) given
(seed, epoch), so any sampler over the mixture is deterministic; order and resume position live
in the sampler (see sampler.py), the epoch here follows `set_epoch`.
"""

import os
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import ConfigDict, with_config

from eve_vlm.data.llava import LlavaDataset, LlavaEncoder
from eve_vlm.processing.chat import Template


@with_config(ConfigDict(extra="forbid"))  # a recipe's sources are validated as this class
@dataclass
class Source:
    path: str
    image_root: str | None = None
    ratio: float | None = None
    repeat: float | None = None
    template: Template | None = None  # None: the recipe's data.template
    name: str | None = None


def _counts(sources: list[Source], sizes: list[int], num_samples: int | None) -> list[int]:
    ratios = [s.ratio for s in sources]
    if all(r is None for r in ratios):
        if num_samples is not None:
            raise ValueError("num_samples needs `ratio` on the sources (with `repeat` the size follows)")
        return [round((1.0 if s.repeat is None else s.repeat) * n) for s, n in zip(sources, sizes)]
    if any(r is None for r in ratios) or any(s.repeat is not None for s in sources):
        raise ValueError("give every source a `ratio`, or none (and use `repeat`); they do not mix")
    if any(r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"ratios must be >= 0 with a positive sum, got {ratios}")
    total = sum(sizes) if num_samples is None else num_samples
    exact = [r / sum(ratios) * total for r in ratios]
    counts = [int(x) for x in exact]
    # largest remainders get the leftover samples, so the counts add up to `total` exactly
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[:total - sum(counts)]:
        counts[i] += 1
    return counts


class Mixture(torch.utils.data.Dataset):
    def __init__(self, sources: list[Source], seed: int = 0, num_samples: int | None = None,
                 processor=None, max_length: int | None = None, turns: str = "joint"):
        """With a `processor`, items are encoded samples (LlavaEncoder, per-source template,
        `turns` as EveProcessor.encode_conversation); without one, parsed records."""
        self.sources, self.seed, self.epoch = sources, seed, 0
        self.datasets = [LlavaDataset(s.path, s.image_root,
                                      LlavaEncoder(processor, s.template, max_length, turns=turns) if processor else None)
                         for s in sources]
        for s, ds in zip(sources, self.datasets):
            s.name = s.name or os.path.basename(s.path)
            if len(ds) == 0:
                raise ValueError(f"mixture source {s.path} has no records")
        self.counts = _counts(sources, [len(d) for d in self.datasets], num_samples)
        self.starts = np.cumsum([0] + self.counts)
        self._indices = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self._indices = epoch, {}

    def state_dict(self) -> dict:
        return {"seed": self.seed, "epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.seed = state["seed"]
        self.set_epoch(state["epoch"])

    def source_indices(self, s: int) -> np.ndarray:
        """Record indices that source s contributes this epoch: whole passes over the source, then
        a random subset (different each epoch) for the fractional part."""
        if s not in self._indices:
            n = len(self.datasets[s])
            passes, rest = divmod(self.counts[s], n)
            subset = np.random.default_rng([self.seed, self.epoch, s]).permutation(n)[:rest]
            self._indices[s] = np.concatenate([np.tile(np.arange(n), passes), subset])
        return self._indices[s]

    def locate(self, k: int) -> tuple[int, int]:
        """(source, record index) of mixture index k."""
        if not 0 <= k < len(self):
            raise IndexError(f"mixture index {k} out of range 0..{len(self) - 1}")
        s = int(np.searchsorted(self.starts, k, side="right")) - 1
        return s, int(self.source_indices(s)[k - self.starts[s]])

    def where(self, k: int) -> str:
        s, i = self.locate(k)
        return self.datasets[s].where(i)

    def __getitem__(self, k: int) -> dict:
        s, i = self.locate(k)
        return self.datasets[s][i]

    def lengths(self, image_tokens: int = 625) -> np.ndarray:
        """Signed length proxies of every mixture index (for LengthGroupedSampler)."""
        return np.concatenate([d.lengths(image_tokens)[self.source_indices(s)]
                               for s, d in enumerate(self.datasets)])
