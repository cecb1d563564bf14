"""The EVEv2 model: patch embedding, modality-routed decoder layers, the HF model classes.

Importing it registers eve with transformers' Auto classes (config, models, processors), so that
`AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load eve
folders without remote code.
"""

from transformers import (
    AutoConfig, AutoImageProcessor, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor,
)

from ..processing.image import EveImageProcessor, num_visual_tokens
from ..processing.processor import EveProcessor
from .config import DECOUPLABLE, EveConfig
from .modeling import EveForConditionalGeneration, EveModel, EvePreTrainedModel
from .patch_embed import PatchEmbedding

AutoConfig.register("eve", EveConfig, exist_ok=True)
AutoModel.register(EveConfig, EveModel, exist_ok=True)
AutoModelForImageTextToText.register(EveConfig, EveForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(EveConfig, EveForConditionalGeneration, exist_ok=True)
AutoImageProcessor.register(
    EveConfig, image_processor_classes={"pil": EveImageProcessor, "torchvision": EveImageProcessor}, exist_ok=True)
AutoProcessor.register(EveConfig, EveProcessor, exist_ok=True)

__all__ = [
    "DECOUPLABLE", "EveConfig", "EveForConditionalGeneration", "EveModel", "EvePreTrainedModel",
    "PatchEmbedding", "num_visual_tokens",
]
