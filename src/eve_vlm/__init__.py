"""eve-vlm: encoder-free vision-language models (EVEv2) in PyTorch."""

__version__ = "0.1.0"
