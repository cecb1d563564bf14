"""The data side of a stage: the recipe's `data` section -> an endless stream of collated
micro-batches for this rank, whose position (epoch, samples consumed) can be saved and restored
exactly. Everything else lives in eve_vlm.data; this is the thin seam the trainer uses."""

import dataclasses

import torch

from ..data.bad import SkipBad
from ..data.collate import Collator
from ..data.mixture import Mixture, Source
from ..data.packing import PackingCollator
from ..data.sampler import LengthGroupedSampler, RandomSampler
from ..errors import EveError
from .recipe import DataSection, EvalSection


class TrainData:
    """Micro-batches of `micro_batch` samples, epoch after epoch. The position counts the samples
    the consumer took, not what a DataLoader prefetched, so a restored position replays exactly
    the batches that a run had not used yet."""

    def __init__(self, mixture: Mixture, sampler, collate, micro_batch: int, num_workers: int = 0):
        self.mixture, self.sampler, self.collate = mixture, sampler, collate
        self.micro_batch, self.num_workers = micro_batch, num_workers
        self.dataset = SkipBad(mixture, seed=sampler.seed)
        self.epoch, self.consumed = 0, 0
        if len(self) == 0:
            raise EveError(f"the data has {len(sampler)} samples per process, fewer than train.micro_batch "
                           f"({micro_batch}): not one batch per epoch")

    def __len__(self) -> int:
        """Micro-batches per epoch (the last partial one is dropped)."""
        return len(self.sampler) // self.micro_batch

    def __iter__(self):
        while True:
            if self.consumed + self.micro_batch > len(self.sampler):
                self.epoch, self.consumed = self.epoch + 1, 0
            self.sampler.load_state_dict({"seed": self.sampler.seed, "epoch": self.epoch, "position": self.consumed})
            self.mixture.set_epoch(self.epoch)  # before the loader copies the dataset into workers
            # the loader draws its workers' base seed from `generator`; from the global RNG it would
            # shift the dropout masks of a resumed run, which starts a loader mid-epoch
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.micro_batch, sampler=self.sampler, collate_fn=self.collate,
                num_workers=self.num_workers, drop_last=True, generator=torch.Generator().manual_seed(self.epoch))
            for batch in loader:
                self.consumed += self.micro_batch
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]


class EvalData:
    """A fixed held-out set: the first `max_samples` records, in order, dealt round-robin to the
    ranks so that every rank runs the same number of forward passes (FSDP gathers weights in
    each). Iterating touches no global RNG, so validation never changes what training does."""

    def __init__(self, mixture: Mixture, collate, micro_batch: int, max_samples: int | None,
                 rank: int = 0, world_size: int = 1, num_workers: int = 0):
        n = len(mixture) if max_samples is None else min(max_samples, len(mixture))
        n -= n % world_size
        if n == 0:
            raise EveError(f"eval: {len(mixture)} record(s) for {world_size} process(es): not one each")
        self.dataset = torch.utils.data.Subset(SkipBad(mixture), range(rank, n, world_size))
        self.collate, self.micro_batch, self.num_workers = collate, micro_batch, num_workers

    def __len__(self) -> int:
        return len(self.dataset)

    def __iter__(self):
        yield from torch.utils.data.DataLoader(
            self.dataset, batch_size=self.micro_batch, collate_fn=self.collate, num_workers=self.num_workers,
            generator=torch.Generator().manual_seed(0))


def _collate(data_cfg: DataSection, processor):
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    return PackingCollator(data_cfg.max_length, pad) if data_cfg.packing else Collator(pad)


def _mixture(sources: list[Source], data_cfg: DataSection, processor, seed: int, num_samples: int | None) -> Mixture:
    # copies: the mixture names its sources, the recipe stays as written
    return Mixture([dataclasses.replace(s) for s in sources], seed=seed, num_samples=num_samples,
                   processor=processor, max_length=data_cfg.max_length, turns=data_cfg.turns)


def build_data(data_cfg: DataSection, processor, micro_batch: int, grad_accum: int, seed: int,
               rank: int = 0, world_size: int = 1) -> TrainData:
    mixture = _mixture(data_cfg.sources, data_cfg, processor, seed, data_cfg.num_samples)
    if data_cfg.group_by_length:
        # One megabatch = one optimizer step of all ranks, so each micro-batch holds similar lengths.
        sampler = LengthGroupedSampler(mixture.lengths(), micro_batch * grad_accum, seed, rank, world_size)
    else:
        sampler = RandomSampler(len(mixture), seed, rank, world_size)
    return TrainData(mixture, sampler, _collate(data_cfg, processor), micro_batch, data_cfg.num_workers)


def build_eval_data(eval_cfg: EvalSection, data_cfg: DataSection, processor, micro_batch: int,
                    rank: int = 0, world_size: int = 1) -> EvalData | None:
    if eval_cfg.sources is None:
        return None
    mixture = _mixture(eval_cfg.sources, data_cfg, processor, 0, None)
    return EvalData(mixture, _collate(data_cfg, processor), micro_batch, eval_cfg.max_samples, rank, world_size,
                    data_cfg.num_workers)
