"""Parallelism wraps the single-device model: a process group when launched by torchrun, activation
checkpointing, FSDP2 (`fully_shard` per decoder layer, then the root for embeddings, PEL, final norm
and LM head)."""

import gc
import os

import torch
import torch.distributed as dist
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from . import lora


def setup() -> tuple[int, int, torch.device]:
    """(rank, world size, device). A process group exists only when torchrun started > 1 process:
    nccl on GPUs, gloo on CPUs."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return (dist.get_rank() if dist.is_initialized() else 0), world, device


def teardown() -> None:
    if dist.is_initialized():
        # FSDP modules sit in reference cycles that keep the process group alive past
        # destroy_process_group; if the cycle collector first runs at interpreter exit, gloo's
        # worker threads are destroyed still joinable and the process aborts ("terminate called
        # without an active exception"), about one two-process run in fifteen here
        gc.collect()
        dist.destroy_process_group()


def parallelize(model, world: int, bf16: bool, activation_checkpointing: bool) -> None:
    """Wrap the single-device model for training: activations of each decoder layer recomputed in
    the backward instead of kept (less memory, one more forward), then FSDP2 over the processes.
    A LoRA model is sharded the same way: its adapters live inside the decoder layers."""
    if activation_checkpointing:
        lora.base(model).activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if world > 1:
        shard(model, bf16)


def shard(model, bf16: bool) -> None:
    # bf16 compute with fp32 master weights and fp32 gradient reduction, as ZeRO-3 + bf16 does.
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16 else \
        MixedPrecisionPolicy()
    decoder = lora.base(model).model
    decoder.use_every_parameter()  # ranks whose batch has no image must still reduce every gradient
    for layer in decoder.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)


def reshard(model) -> None:
    """Re-shard after forwards without a backward (validation): the root keeps its weights
    unsharded after a forward, waiting for the backward that would free them."""
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def all_sum(values: list[float], device) -> list[float]:
    """Sum of each value over all ranks (one collective for the whole list)."""
    if not dist.is_initialized():
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def all_gather(obj) -> list:
    if not dist.is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
