"""The plugin's registration and its strict weight loading."""

import importlib.metadata
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from vllm_common import TINY, engine, reference


def test_entry_point_registers_the_architecture():
    from vllm import ModelRegistry

    from eve_vlm.integrations.vllm import ARCHITECTURE

    (plugin,) = [e for e in importlib.metadata.entry_points(group="vllm.general_plugins") if e.name == "eve"]
    register = plugin.load()
    register()
    register()  # every vLLM process calls it; again is a no-op
    assert ARCHITECTURE in ModelRegistry.get_supported_archs()
    from vllm.model_executor.models.interfaces import supports_multimodal

    from eve_vlm.integrations.vllm.model import EveForConditionalGeneration

    assert supports_multimodal(EveForConditionalGeneration)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eve")
    path = str(tmp / "model")
    reference(tmp, path, [], TINY)  # builds the folder only
    return path


@pytest.mark.parametrize("change, named", [
    ("extra", "model.layers.0.mlp.bogus.weight"),
    ("missing", "model.layers.1.vision_mlp.down_proj.weight"),
    ("missing", "model.layers.0.self_attn.vision_k_proj.weight"),  # one shard of a stacked parameter
])
def test_every_checkpoint_tensor_is_accounted_for(folder, tmp_path, capfd, change, named):
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    weights = load_file(broken / "model.safetensors")
    if change == "extra":
        weights[named] = torch.zeros(4)
    else:
        del weights[named]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(RuntimeError, match="initialization failed"), engine(str(broken)):
        pass
    # the engine fails in a worker process, whose log (on our stdout / stderr) names the tensor; an
    # unexpected one by its module
    log = "".join(capfd.readouterr())
    assert named.rsplit(".", 1)[0] in log
