"""Serving: an OpenAI-compatible HTTP server with dynamic batching, and a Gradio web page."""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach_stub(__name__, __file__)
