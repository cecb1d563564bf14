"""Data inside a run: bad records are skipped and counted by reason in metrics.jsonl (packing and
length grouping on), and the data position survives a state_dict round trip."""

import json
import os

import pytest
import yaml

from eve_vlm.train import load_recipe, train
from eve_vlm.train.build import load_model
from eve_vlm.train.data import build_data
from tiny import base_recipe

pytestmark = pytest.mark.usefixtures("one_thread")


def test_bad_samples_are_skipped_and_counted(toy, tmp_path):  # noqa: F811
    with open(toy["data"]) as f:
        good = f.readlines()[:8]
    image = json.loads(good[0])["image"]
    bad = [
        '{"id": "broken", "conversations": [\n',  # malformed JSON
        json.dumps({"id": "lost", "image": "missing.png", "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a box"}]}) + "\n",
        json.dumps({"id": "two-markers", "image": image, "conversations": [
            {"from": "human", "value": "<image><image>"}, {"from": "gpt", "value": "a box"}]}) + "\n",
        json.dumps({"id": "long", "image": image, "conversations": [
            {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "word " * 300}]}) + "\n",
    ]
    path = tmp_path / "dirty.jsonl"
    path.write_text("".join(good[:4] + bad + good[4:]))
    recipe = base_recipe(toy, tmp_path / "run", **{
        "data.sources": [{"path": str(path), "image_root": toy["images"]}], "data.packing": True,
        "data.group_by_length": True, "train.steps": 3, "output.tensorboard": True})  # 3 x 4: every record once
    summary = train(recipe)
    assert summary["completed"]
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        last = [json.loads(line) for line in f][-1]
    for reason in ("json_malformed", "image_missing", "placeholder_mismatch", "too_long"):
        assert last[f"bad/{reason}"] >= 1, (reason, last)
    assert last["bad/skipped"] == sum(v for k, v in last.items() if k.startswith("bad/") and k not in
                                      ("bad/seen", "bad/skipped"))
    assert last["samples"] == 12  # skipped records were replaced: batches keep their size
    report = json.loads((tmp_path / "run" / "bad_samples.json").read_text())
    assert report[0]["bad"] == last["bad/skipped"]
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path / "run" / "tb"))
    saved = str(tmp_path / "run" / "recipe.yaml")
    with open(saved) as f:
        assert yaml.safe_load(f) == recipe.model_dump(mode="json")  # the resolved recipe, as run: plain YAML
    assert load_recipe(saved) == recipe


def test_data_position_round_trip(toy):  # noqa: F811
    recipe = base_recipe(toy, "unused")
    _, processor = load_model(recipe.model, recipe.data)
    data = build_data(recipe.data, processor, micro_batch=3, grad_accum=1, seed=0)
    assert len(data) == 10  # 32 samples / 3, last partial batch dropped
    stream = iter(data)
    for _ in range(12):  # into the second epoch
        next(stream)
    state = data.state_dict()
    expected = [next(stream)["meta"]["ids"] for _ in range(3)]
    again = build_data(recipe.data, processor, micro_batch=3, grad_accum=1, seed=0)
    again.load_state_dict(state)
    assert [b["meta"]["ids"] for b, _ in zip(again, range(3))] == expected
    assert state == {"epoch": 1, "consumed": 6}
