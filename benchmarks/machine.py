"""What every benchmark records next to its numbers: the machine and the library versions."""

import contextlib
import os
import platform

import torch
import transformers


def machine_info() -> dict:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    return dict(cpu=cpu, cores=os.cpu_count(), threads=torch.get_num_threads(), python=platform.python_version(),
                torch=torch.__version__, transformers=transformers.__version__)


def memory_status() -> dict:
    """This process's resident set size now (VmRSS) and its high-water mark (VmHWM), in bytes.
    Unlike tracemalloc these include torch's own allocations; writing "5" to /proc/self/clear_refs
    resets the high-water mark to the current RSS (Linux >= 4.0)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                key, val = line.split(":")
                out[key] = int(val.split()[0]) * 1024  # kB -> bytes
    return out


def machine() -> str:
    m = machine_info()
    return (f"{m['cpu']}, {m['cores']} cores, Python {m['python']}, torch {m['torch']} ({m['threads']} thread(s)), "
            f"transformers {m['transformers']}")


def report(lines: list[str], results, write: bool = True) -> None:
    """Print a Markdown section and append it to the results file (unless `write` is false)."""
    print("\n".join(lines))
    if write:
        with open(results, "a", encoding="utf-8") as f:
            f.write("\n" + "\n".join(lines))
