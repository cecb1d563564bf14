"""The EVEv2 model: patch embedding, modality-routed decoder layers, the HF model classes.

Importing the classes registers eve with transformers' Auto classes (config.py, modeling.py), so
that `AutoModelForCausalLM.from_pretrained(folder)` and `AutoProcessor.from_pretrained(folder)` load
eve folders without remote code.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
