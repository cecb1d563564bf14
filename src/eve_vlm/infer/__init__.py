"""Inference: load a saved model folder, generate (batched, streamed), and the chat / infer commands."""

from .engine import Completion, GenerationOptions, Prompt, encode, generate, image_sources, load

__all__ = ["Completion", "GenerationOptions", "Prompt", "encode", "generate", "image_sources", "load"]
