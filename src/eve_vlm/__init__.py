"""eve-vlm: encoder-free vision-language models (EVEv2) in PyTorch."""

from .model import EveConfig, EveForConditionalGeneration, EveModel, num_visual_tokens

__version__ = "0.1.0"
__all__ = ["EveConfig", "EveForConditionalGeneration", "EveModel", "num_visual_tokens", "__version__"]
