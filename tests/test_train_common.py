"""Shared helpers for the training tests: a toy model world (built once per session), recipes,
subprocess launchers. No test functions here."""

import json
import os
import signal
import subprocess
import sys

import pytest

from eve_vlm.train.recipe import Recipe, apply_override, save_recipe, validate
from eve_vlm.train.toy import toy_data, toy_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.dirname(sys.executable)


@pytest.fixture(scope="session")
def toy(tmp_path_factory):
    """{"stage1": model without vision copies, "eve": model with all (EVEv2), "data": jsonl, "images": dir}."""
    root = tmp_path_factory.mktemp("toy")
    jsonl = toy_data(str(root / "data"), n=32)
    return {"stage1": toy_model(str(root / "stage1")),
            "eve": toy_model(str(root / "eve"), decoupled=["attention", "norm", "ffn"]),
            "data": jsonl, "images": str(root / "data" / "images")}


def base_recipe(toy: dict, run_dir, source: str = "stage1", **overrides) -> Recipe:
    """A fast fp32 recipe over the toy data; overrides are `a.b` keys (dots as in the CLI)."""
    recipe = {
        "model": {"source": toy[source] if source in toy else source},
        "data": {"sources": [{"path": toy["data"], "image_root": toy["images"]}], "max_size": 64, "max_length": 256},
        "train": {"groups": ["pel"], "lr": 1e-3, "global_batch": 4, "micro_batch": 2, "steps": 3, "bf16": False,
                  "warmup_ratio": 0.0, "progress": False},
        "checkpoint": {"every": None},
        "output": {"dir": str(run_dir), "tensorboard": False},
    }
    for key, value in overrides.items():
        apply_override(recipe, f"{key}={json.dumps(value)}")
    return validate(recipe)


def write_recipe(recipe: Recipe, path) -> str:
    save_recipe(recipe, str(path))
    return str(path)


def losses(run_dir) -> list[float]:
    """Training losses per step (not the step-0 held-out record)."""
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if "loss" in r]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.path.join(ROOT, "src")}


def train_cmd(recipe_path: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "eve_vlm.train", "train", recipe_path, *overrides]


def run(cmd: list[str], timeout: int = 300, ok: bool = True) -> str:
    """Run to completion in its own process group, so that a timeout also ends torchrun's workers;
    `ok`: whether it must succeed (else: must fail)."""
    proc = subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise
    assert (proc.returncode == 0) == ok, out[-6000:]
    return out
