"""The demo's stage chain (`make demo` minus the data and the time): every stage trains from the
previous one's model folder; completed stages are reused on a rerun, and a stage that was stopped
resumes from its checkpoint instead of being taken for finished."""

import json

import pytest

from eve_vlm.demo import STAGES, run_stages
from tiny import base_recipe, losses, write_recipe

pytestmark = pytest.mark.usefixtures("one_thread")

GROUPS = {"stage1": ["pel"], "stage2.1": ["pel", "vision"], "stage2.2": ["pel", "vision", "llm"],
          "stage3": ["pel", "vision", "llm"]}


def toy_recipes(toy, tmp_path):  # noqa: F811
    folder = tmp_path / "recipes"
    folder.mkdir()
    source = toy["stage1"]
    for stage in STAGES:
        extra = {"model.decoupled": ["attention", "norm", "ffn"], "model.init_vision": True} \
            if stage == "stage2.1" else {}
        run_dir = tmp_path / "runs" / stage
        write_recipe(base_recipe(toy, run_dir, source=source, **{
            "train.groups": GROUPS[stage], "train.steps": 2, "checkpoint.every": 1, **extra}), folder / f"{stage}.yaml")
        source = str(run_dir / "model")
    return folder


def test_stages_chain_are_reused_and_a_stopped_one_resumes(toy, tmp_path):  # noqa: F811
    folder = toy_recipes(toy, tmp_path)
    first = run_stages(str(folder), str(tmp_path), [])
    assert [s["completed"] for s in first] == [True] * len(STAGES)
    assert [s["parameters"].get("vision", {}).get("trainable", 0) > 0 for s in first] == [False, True, True, True]
    last = tmp_path / "runs" / "stage3"
    expected = losses(last)

    assert run_stages(str(folder), str(tmp_path), []) == first  # nothing trains again

    # as if stage 3 had been stopped by a signal after its step-1 checkpoint
    summary = json.loads((last / "summary.json").read_text())
    (last / "summary.json").write_text(json.dumps({**summary, "completed": False, "stopped_by": "SIGTERM"}))
    again = run_stages(str(folder), str(tmp_path), [])
    assert again[:3] == first[:3] and again[3]["completed"]
    assert losses(last) == expected  # resumed from step 1, exactly


def test_the_demo_recipes_read_files_the_easyvqa_export_writes(tmp_path):
    """Each demo stage trains on a file that `export_easyvqa` (the demo's first step) writes."""
    import os

    from eve_vlm.data.easyvqa import export_easyvqa
    from eve_vlm.train import load_recipe

    written = {os.path.basename(p) for p in export_easyvqa(str(tmp_path))}
    root = os.path.join(os.path.dirname(__file__), "..", "recipes", "demo-easyvqa")
    for stage in STAGES:
        recipe = load_recipe(os.path.join(root, f"{stage}.yaml"), [])
        for source in recipe.data.sources:
            assert source.path.startswith("demo-out/data/") and os.path.basename(source.path) in written, source
