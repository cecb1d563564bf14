"""How long `eve --help` and `eve COMMAND --help` take, as a user starts them (a fresh process each).

Goal (issue #18): < 0.5 s each. Measured side by side with a bare `python -c pass` (the floor any
console script pays) and with `import torch, transformers` (what every command paid when the
package imported its model eagerly). Median of `--repeats` runs; appends to benchmarks/RESULTS.md.

    python benchmarks/bench_cli.py [--repeats 7] [--no-write]
"""

import argparse
import datetime
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from machine import machine, report  # noqa: E402

COMMANDS = ["convert", "train", "chat", "infer", "serve", "web", "eval", "caption"]


def seconds(argv: list[str], repeats: int) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--results", type=Path, default=HERE / "RESULTS.md")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    eve = shutil.which("eve", path=os.path.dirname(sys.executable)) or shutil.which("eve")
    if eve is None:
        sys.exit("the `eve` console script is not installed next to this Python (pip install -e .)")
    rows = [("`python -c pass`", seconds([sys.executable, "-c", "pass"], args.repeats)),
            ("`python -c 'import torch, transformers'`",
             seconds([sys.executable, "-c", "import torch, transformers"], args.repeats)),
            ("`eve --help`", seconds([eve, "--help"], args.repeats))]
    rows += [(f"`eve {c} --help`", seconds([eve, c, "--help"], args.repeats)) for c in COMMANDS]
    worst = max(t for name, t in rows if name.startswith("`eve"))
    lines = [f"## bench_cli ({datetime.date.today()})", "", f"Machine: {machine()}. Median of {args.repeats} "
             "fresh processes each.", "", "| command | seconds |", "|---|---|"]
    lines += [f"| {name} | {t:.3f} |" for name, t in rows]
    lines += ["", f"Slowest `eve` command: {worst:.3f} s (goal < 0.5 s: {'met' if worst < 0.5 else 'NOT met'}).", ""]
    report(lines, args.results, write=not args.no_write)


if __name__ == "__main__":
    main()
