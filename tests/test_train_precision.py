"""train.bf16: true / false force, auto decides by the CPU's bf16 units and a measured probe."""

import pytest
import torch

from eve_vlm.train import precision
from eve_vlm.train.metrics import read_metrics
from eve_vlm.train.recipe import RecipeError, validate
from tiny import base_recipe

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def cpu(monkeypatch):
    """A CPU with or without native bf16 matmuls, whose probe measures bf16 at `speedup` x fp32."""
    calls = []

    def make(native: bool = True, speedup: float = 1.0):
        monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: native)
        monkeypatch.setattr(precision, "probe", lambda *shape: calls.append(shape) or
                            {"float32": 100.0, "bfloat16": 100.0 * speedup})
        return calls
    return make


def test_auto_picks_bf16_where_it_is_measurably_faster(cpu):
    calls = cpu(native=True, speedup=2.7)
    p = precision.choose("auto", CPU)
    assert p.bf16 and p.dtype == "bfloat16" and p.gflops == {"float32": 100.0, "bfloat16": 270.0}
    assert "2.7x fp32 measured" in p.reason
    assert len(calls) == 1


def test_auto_keeps_fp32_where_bf16_is_not_faster_enough(cpu):
    cpu(native=True, speedup=1.1)
    p = precision.choose("auto", CPU)
    assert not p.bf16 and p.dtype == "float32" and "only 1.10x" in p.reason


def test_auto_and_true_keep_fp32_without_bf16_units_and_do_not_probe(cpu):
    calls = cpu(native=False, speedup=3.0)
    for setting in ("auto", True):
        p = precision.choose(setting, CPU)
        assert not p.bf16 and "no native bf16 matmul" in p.reason
    assert calls == []


def test_true_and_false_force_without_probing(cpu):
    calls = cpu(native=True, speedup=1.0)
    assert precision.choose(True, CPU).bf16
    assert not precision.choose(False, CPU).bf16
    assert calls == []


def test_probe_shape_follows_the_model_and_stays_small(cpu):
    from tiny import tiny_eve

    calls = cpu(native=True, speedup=2.0)
    precision.choose("auto", CPU, tiny_eve().config, tokens=4096)
    precision.choose("auto", CPU, type("Big", (), {"hidden_size": 3584, "intermediate_size": 18944}), tokens=4096)
    assert calls == [(1024, 64, 128), (16, 3584, 18944)]


def test_the_real_probe_measures_both_dtypes():
    rates = precision.probe(32, 64, 128, seconds=0.01)
    assert set(rates) == {"float32", "bfloat16"} and all(r > 0 for r in rates.values())


@pytest.mark.parametrize("value, ok", [("auto", True), (True, True), (False, True), ("fast", False), (1, False)])
def test_recipe_takes_true_false_or_auto(toy, tmp_path, value, ok):  # noqa: F811
    if ok:
        assert base_recipe(toy, tmp_path, **{"train.bf16": value}).train.bf16 == value
    else:
        with pytest.raises(RecipeError, match="train.bf16"):
            base_recipe(toy, tmp_path, **{"train.bf16": value})


def test_auto_is_the_default(toy, tmp_path):  # noqa: F811
    raw = base_recipe(toy, tmp_path).model_dump()
    del raw["train"]["bf16"]
    assert validate(raw).train.bf16 == "auto"


def test_the_run_records_dtype_flops_and_mfu(toy, tmp_path, cpu):  # noqa: F811
    from eve_vlm.train import train

    cpu(native=True, speedup=1.0)  # fp32, decided by the probe
    summary = train(base_recipe(toy, tmp_path / "run", **{"train.bf16": "auto", "train.steps": 2,
                                                          "train.peak_gflops": 1000.0}))
    assert summary["dtype"] == "float32" and "only 1.00x" in summary["dtype_reason"]
    assert summary["gflops_per_s"] > 0 and summary["mfu"] == pytest.approx(summary["gflops_per_s"] / 1000)
    assert "bf16: false" in (tmp_path / "run" / "recipe.yaml").read_text()
    for r in read_metrics(str(tmp_path / "run")):
        assert r["flops"] > 0 and r["padding_flops"] >= 0
        assert r["gflops_per_s"] == pytest.approx(r["flops"] / r["step_time"] / 1e9)
        assert r["mfu"] == pytest.approx(r["gflops_per_s"] / 1000)
