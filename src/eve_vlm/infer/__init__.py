"""Inference: load a saved model folder, generate (batched, streamed), predictors (a local folder or an
OpenAI-compatible endpoint answering (prompt, image) items), and the chat / infer commands."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
