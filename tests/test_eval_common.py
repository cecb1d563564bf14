"""Shared helpers for the evaluation tests: a tiny saved model, the `eve eval` command, a scripted
predictor, user JSONL files with images, and a server in a thread."""

import argparse
import json
import os

import pytest
import torch
from PIL import Image

from eve_vlm.eval.cli import add_commands
from test_infer_common import serve_in_thread as serving  # noqa: F401  (used by the eval tests)


def eve_eval(*argv) -> None:
    """Run `eve eval ARGV` (the parser built the way eve_vlm.cli builds it)."""
    parser = argparse.ArgumentParser(prog="eve")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval", *map(str, argv)])
    args.handler(args)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A random 2-layer EVE model with a byte-level tokenizer and the official `eve` chat template;
    weights large enough (std 0.3) that different prompts get different greedy replies."""
    from eve_vlm.train.toy import toy_model

    torch.manual_seed(0)
    return toy_model(str(tmp_path_factory.mktemp("tiny-eve")), template="eve", initializer_range=0.3)




class Scripted:
    """A predictor that answers from a dict (prompt substring -> reply) and records its calls."""

    name = "scripted"

    def __init__(self, replies: dict, settings: dict | None = None):
        self.replies, self.calls = replies, []
        self.settings = settings or {"mode": "scripted"}

    def predict(self, items, max_new_tokens):
        self.calls.append([text for text, _ in items])
        out = []
        for text, image in items:
            if not os.path.exists(image):
                out.append(FileNotFoundError(f"no such file {image}"))
                continue
            out.append(next((r for key, r in self.replies.items() if key in text), "no idea"))
        return out


def write_jsonl(path, rows) -> str:
    """Rows (dicts, or raw strings for broken lines) as a JSONL file."""
    with open(path, "w") as f:
        f.writelines((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)
    return str(path)


def make_images(folder, *names) -> None:
    for i, name in enumerate(names):
        Image.new("RGB", (48, 32), (40 * i % 255, 120, 200)).save(os.path.join(folder, name))


