"""`eve plot RUN_DIR` writes loss and learning-rate curves to a PNG."""

import argparse
import json

from eve_vlm.train.cli import add_commands


def test_plot_writes_a_png(tmp_path, capsys):
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(1, 31):
            f.write(json.dumps({"step": step, "loss": 5 / step, "lr/pel": 1e-3 * step / 30, "lr/llm": 1e-4}) + "\n")
        f.write('{"step": 31, "loss"')  # a line torn by a killed run is skipped
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers())
    args = parser.parse_args(["plot", str(tmp_path)])
    args.handler(args)
    png = tmp_path / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert str(png) in capsys.readouterr().out
