from .model import EveConfig, EveForConditionalGeneration, EveModel
from .processing.image import num_visual_tokens
