"""The eve modules that the vLLM plugin imports work under the transformers of the venv that
runs this file: eve's own pin (`make test`) and vLLM's older one (`make test-vllm`)."""

import torch
from PIL import Image
from transformers import AutoConfig, AutoProcessor

from eve_vlm.model.config import EveConfig
from eve_vlm.model.decoupled import Routing
from eve_vlm.model.patch_embed import PatchEmbedding
from eve_vlm.processing import EveImageProcessor, EveProcessor, smollm2_tokenizer


def test_folder_config_and_processor_load_through_auto_classes(tmp_path):
    processor = EveProcessor(EveImageProcessor(max_size=64), smollm2_tokenizer(), template="native")
    EveConfig(hidden_size=64, num_attention_heads=4, image_token_id=processor.image_token_id,
              decoupled=["ffn"]).save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)

    config = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(config, EveConfig) and config.decoupled == ["ffn"] and config.head_dim == 16
    loaded = AutoProcessor.from_pretrained(tmp_path)
    assert isinstance(loaded, EveProcessor) and loaded.image_token_id == processor.image_token_id
    images = loaded.image_processor([Image.new("RGB", (64, 48), "red"), Image.new("RGB", (30, 90), "blue")])
    assert images["num_image_tokens"] == [9, 13]
    tokens = PatchEmbedding(64, 32)(images["pixel_values"])
    assert [tuple(t.shape) for t in tokens] == [(9, 64), (13, 64)]


def test_routing_of_flat_token_rows():
    """vLLM hands the model one flat token dimension: the routing must work on a 1-D mask."""
    visual = torch.tensor([False, True, True, False, True])
    routing = Routing.from_mask(visual)
    x = torch.arange(10.0).view(5, 2)
    text, vision = routing.split(routing.sort(x))
    assert text[:, 0].tolist() == [0.0, 6.0] and vision[:, 0].tolist() == [2.0, 4.0, 8.0]
    assert torch.equal(routing.unsort(routing.join([text, vision])), x)
