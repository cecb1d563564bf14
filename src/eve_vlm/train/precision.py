"""`train.bf16` -> the training dtype: bf16 autocast where this machine multiplies bf16 natively and
measurably faster, fp32 elsewhere.

`true` / `false` force a choice (`true` still falls back to fp32 on a CPU without bf16 matmul
units, where bf16 runs 8-25x slower than fp32). `auto` decides:

  CUDA    bf16 where the GPU supports it
  CPU     fp32 without AVX512-BF16 / AMX (oneDNN's own check); otherwise a ~0.2 s probe times one
          linear layer at the model's shape ([tokens x hidden] @ [hidden x intermediate], the
          largest matmul of a decoder layer) in fp32 and under bf16 autocast (the weight cast
          included, as training pays it), with the threads training will use, and picks bf16 only
          if it is at least BF16_MIN_SPEEDUP times faster.

The measured rates are part of the decision (`Precision.gflops`), so a run records why it trained
in the dtype it did.
"""

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

BF16_MIN_SPEEDUP = 1.3
PROBE_TOKENS, PROBE_FLOPS = 1024, 2e9  # the probe's rows: at most these, and at most 2 GFLOP a run


@dataclass(frozen=True)
class Precision:
    bf16: bool
    reason: str
    gflops: dict = field(default_factory=dict)  # probed linear-layer GFLOP/s by dtype, when measured

    @property
    def dtype(self) -> str:
        return "bfloat16" if self.bf16 else "float32"


def cpu_bf16_units() -> str | None:
    """"AMX" or "AVX512-BF16" when oneDNN multiplies bf16 natively on this CPU, else None."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return None
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next((line for line in f if line.startswith("flags")), "").split())
    except OSError:
        pass
    return "AMX" if "amx_bf16" in flags else "AVX512-BF16" if "avx512_bf16" in flags else "native bf16"


def probe(tokens: int, hidden: int, intermediate: int, seconds: float = 0.2) -> dict:
    """Best-of GFLOP/s of `F.linear` [tokens, hidden] x [intermediate, hidden]^T in fp32 and under
    bf16 autocast, runs alternating (so a busy machine slows both alike) for about `seconds`."""
    g = torch.Generator().manual_seed(0)  # the global RNG is the run's: leave it alone
    x = torch.randn(tokens, hidden, generator=g)
    w = torch.randn(intermediate, hidden, generator=g)
    runs = {"float32": lambda: F.linear(x, w), "bfloat16": _autocast(lambda: F.linear(x, w))}
    best = {}
    for name, fn in runs.items():  # warm-up: the first call of a shape sets up oneDNN kernels
        fn()
        best[name] = float("inf")
    deadline = time.perf_counter() + seconds
    while True:
        for name, fn in runs.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
        if time.perf_counter() > deadline:
            break
    return {name: 2 * tokens * hidden * intermediate / t / 1e9 for name, t in best.items()}


def _autocast(fn):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn()
    return run


def choose(setting, device: torch.device, config=None, tokens: int = PROBE_TOKENS) -> Precision:
    """`setting`: the recipe's train.bf16 (True, False or "auto"); `config`: the model's (for the
    probe's shape); `tokens`: tokens per micro-batch (the probe's rows, capped)."""
    if setting is False:
        return Precision(False, "train.bf16=false")
    if device.type != "cpu":
        if setting is True:
            return Precision(True, "train.bf16=true")
        ok = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return Precision(ok, f"{'bf16' if ok else 'no bf16'} support on {device.type}")
    units = cpu_bf16_units()
    if units is None:
        # Without AVX-512-BF16 / AMX, bf16 matmuls take a slow path: 8-25x slower than fp32 (measured).
        why = "this CPU has no native bf16 matmul (AVX512-BF16 / AMX), where bf16 runs ~10x slower than fp32"
        return Precision(False, why + ("; train.bf16=true overridden" if setting is True else ""))
    if setting is True:
        return Precision(True, f"train.bf16=true (this CPU has {units})")
    hidden = config.hidden_size if config is not None else 1024
    intermediate = config.intermediate_size if config is not None else 4 * hidden
    tokens = max(16, min(tokens, PROBE_TOKENS, int(PROBE_FLOPS // (2 * hidden * intermediate))))
    rates = probe(tokens, hidden, intermediate)
    speedup = rates["bfloat16"] / rates["float32"]
    shape = f"[{tokens}x{hidden}]@[{hidden}x{intermediate}]"
    if speedup >= BF16_MIN_SPEEDUP:
        return Precision(True, f"this CPU has {units}, bf16 autocast linear {speedup:.1f}x fp32 measured "
                               f"({shape}, {torch.get_num_threads()} threads)", rates)
    return Precision(False, f"this CPU has {units} but bf16 autocast linear was only {speedup:.2f}x fp32 "
                            f"measured ({shape}, {torch.get_num_threads()} threads; bf16 needs >= "
                            f"{BF16_MIN_SPEEDUP}x)", rates)
