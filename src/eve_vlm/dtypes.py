"""The floating-point types weights are stored and run in, defined once for every `--dtype` flag
and recipe: short names on the command line, torch's names in recipes (as config.json writes them)."""

from typing import Literal, get_args

from .errors import EveError

DType = Literal["fp32", "bf16", "fp16"]
DTYPES: tuple[str, ...] = get_args(DType)
TorchDType = Literal["float32", "bfloat16", "float16"]
TORCH_NAMES = dict(zip(DTYPES, get_args(TorchDType)))  # short name -> torch's name


def torch_dtype(name: str):
    """"bf16" or "bfloat16" -> torch.bfloat16 (and so on)."""
    import torch  # the CLIs read DTYPES for --help; torch loads only when a dtype is used

    full = TORCH_NAMES.get(name, name)
    if full not in TORCH_NAMES.values():
        raise EveError(f"unknown dtype {name!r}; choose from {list(DTYPES)}")
    return getattr(torch, full)
