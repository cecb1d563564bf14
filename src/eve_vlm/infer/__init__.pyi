from .engine import Completion, GenerationOptions, Prompt, encode, generate, image_sources, load
from .predictors import DirectPredictor, EndpointPredictor
