"""The data side of a stage: the recipe's `data` section -> an endless stream of collated
micro-batches for this rank, whose position (epoch, samples consumed) can be saved and restored
exactly. Everything else lives in eve_vlm.data; this is the thin seam the trainer uses."""

import torch

from ..data.bad import SkipBad
from ..data.collate import Collator
from ..data.mixture import Mixture, Source
from ..data.packing import PackingCollator
from ..data.sampler import LengthGroupedSampler, RandomSampler
from ..errors import EveError


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
            loader = torch.utils.data.DataLoader(
                self.dataset, batch_size=self.micro_batch, sampler=self.sampler, collate_fn=self.collate,
                num_workers=self.num_workers, drop_last=True)
            for batch in loader:
                self.consumed += self.micro_batch
                yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = state["epoch"], state["consumed"]


def build_data(data_cfg: dict, processor, micro_batch: int, grad_accum: int, seed: int,
               rank: int = 0, world_size: int = 1) -> TrainData:
    sources = [Source(**{"template": None, **s}) for s in data_cfg["sources"]]
    mixture = Mixture(sources, seed=seed, num_samples=data_cfg["num_samples"], processor=processor,
                      max_length=data_cfg["max_length"])
    if data_cfg["group_by_length"]:
        # One megabatch = one optimizer step of all ranks, so each micro-batch holds similar lengths.
        sampler = LengthGroupedSampler(mixture.lengths(), micro_batch * grad_accum, seed, rank, world_size)
    else:
        sampler = RandomSampler(len(mixture), seed, rank, world_size)
    tok = processor.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    collate = PackingCollator(data_cfg["max_length"], pad) if data_cfg["packing"] else Collator(pad)
    return TrainData(mixture, sampler, collate, micro_batch, data_cfg["num_workers"])
