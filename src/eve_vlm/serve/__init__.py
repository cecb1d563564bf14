"""Serving: an OpenAI-compatible HTTP server with dynamic batching, and a Gradio web page."""

from .app import ApiError, Limits, create_app
from .batcher import Batcher, QueueFull

__all__ = ["ApiError", "Batcher", "Limits", "QueueFull", "create_app"]
