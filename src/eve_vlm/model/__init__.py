"""The EVE model: config, patch embedding, routed decoder, transformers-native classes."""

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForImageTextToText

from .config import DECOUPLABLE, EveConfig
from .modeling import EveForConditionalGeneration, EveModel, EvePreTrainedModel
from .patch_embed import PatchEmbedding, num_visual_tokens

# Out-of-tree registration: after `import eve_vlm`, the Auto classes load a saved EVE folder
# without trust_remote_code.
AutoConfig.register("eve", EveConfig, exist_ok=True)
AutoModel.register(EveConfig, EveModel, exist_ok=True)
AutoModelForImageTextToText.register(EveConfig, EveForConditionalGeneration, exist_ok=True)
AutoModelForCausalLM.register(EveConfig, EveForConditionalGeneration, exist_ok=True)

__all__ = [
    "DECOUPLABLE", "EveConfig", "EveForConditionalGeneration", "EveModel", "EvePreTrainedModel",
    "PatchEmbedding", "num_visual_tokens",
]
