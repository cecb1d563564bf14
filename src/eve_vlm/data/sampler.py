"""Deterministic, resumable, rank-aware samplers.

Every rank computes the same global order from (seed, epoch) and takes its own share, so no
communication is needed. `position` counts the indices this rank has yielded in the current
epoch; a DataLoader runs ahead of the training loop (prefetching), so for exact resume save
`state_dict(consumed=samples_the_loop_used)` rather than the raw position.
"""

import numpy as np
import torch


class _Resumable(torch.utils.data.Sampler):
    def __init__(self, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.position = 0, 0
        self._cached = (None, None)

    def _order(self) -> np.ndarray:
        if self._cached[0] != self.epoch:  # __len__ and __iter__ both need it; it costs a shuffle
            self._cached = (self.epoch, self.order(self.epoch))
        return self._cached[1]

    def order(self, epoch: int) -> np.ndarray:
        """This rank's indices for one epoch."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._order())

    def __iter__(self):
        if self.position >= len(self._order()):  # a new pass after a finished one: next epoch
            self.epoch, self.position = self.epoch + 1, 0
        order = self._order()
        while self.position < len(order):
            self.position += 1
            yield int(order[self.position - 1])

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.position = epoch, 0

    def state_dict(self, consumed: int | None = None) -> dict:
        return {"seed": self.seed, "epoch": self.epoch,
                "position": self.position if consumed is None else consumed}

    def load_state_dict(self, state: dict) -> None:
        if state["seed"] != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this run uses {self.seed}")
        self.epoch, self.position = state["epoch"], state["position"]

    def _rng(self, epoch: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, epoch])


class RandomSampler(_Resumable):
    """A fresh permutation per epoch, padded by repetition to a multiple of world_size (every rank
    gets the same number of samples), then strided over the ranks."""

    def __init__(self, n: int, seed: int = 0, rank: int = 0, world_size: int = 1):
        super().__init__(seed, rank, world_size)
        self.n = n

    def order(self, epoch: int) -> np.ndarray:
        perm = self._rng(epoch).permutation(self.n)
        perm = np.concatenate([perm, perm[:(-self.n) % self.world_size]])
        return perm[self.rank::self.world_size]


def _snake(n: int, world_size: int, rank: int) -> np.ndarray:
    """Positions of a longest-first megabatch of n that go to `rank` when dealt out 0,1,..,w-1,
    w-1,..,0,0,1,..: every rank gets the same count and a similar total length."""
    p = np.arange(n)
    within, rnd = p % world_size, p // world_size
    return p[np.where(rnd % 2 == 0, within, world_size - 1 - within) == rank]


class LengthGroupedSampler(_Resumable):
    """LLaVA's modality-length grouped sampler.

    `lengths` are signed: positive for samples with images, negative for text-only ones; the two
    modalities never share a megabatch (batch_size x world_size), except the final leftovers.
    Indices are shuffled, cut into groups of `group_megabatches` megabatches, sorted by length
    inside a group (so a batch holds similar lengths: less padding) and the megabatches shuffled.
    Each megabatch is dealt out over the ranks so that they get similar total lengths.
    """

    def __init__(self, lengths, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 group_megabatches: int = 8):
        super().__init__(seed, rank, world_size)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.batch_size, self.group_megabatches = batch_size, group_megabatches

    def _megabatches(self, indices: np.ndarray, rng) -> list[np.ndarray]:
        size = self.batch_size * self.world_size
        indices = indices[rng.permutation(len(indices))]
        out = []
        for g in range(0, len(indices), size * self.group_megabatches):
            group = indices[g:g + size * self.group_megabatches]
            group = group[np.argsort(-np.abs(self.lengths[group]), kind="stable")]
            out += [group[i:i + size] for i in range(0, len(group), size)]
        return out

    def order(self, epoch: int) -> np.ndarray:
        rng = self._rng(epoch)
        size = self.batch_size * self.world_size
        full, leftover = [], []
        for mask in (self.lengths > 0, self.lengths <= 0):
            megabatches = self._megabatches(np.flatnonzero(mask), rng)
            if megabatches and len(megabatches[-1]) < size:
                leftover.append(megabatches.pop())
            full += megabatches
        full = np.array(full, dtype=np.int64).reshape(-1, size)[rng.permutation(len(full))]
        mine = full[:, _snake(size, self.world_size, self.rank)].reshape(-1)
        if leftover:  # padded by repetition so that every rank gets the same number of samples
            last = np.concatenate(leftover)
            last = np.resize(last, -(-len(last) // self.world_size) * self.world_size)
            last = last[np.argsort(-np.abs(self.lengths[last]), kind="stable")]
            mine = np.concatenate([mine, last[_snake(len(last), self.world_size, self.rank)]])
        return mine
